//! sandgate: an edge gateway for API sandboxes.
//!
//! The request path is listed, in order, in [`pipeline`]; `ARCHITECTURE.md`
//! walks one request through it. Module map:
//!
//! - [`server`]: listeners, TLS/mTLS, HTTP/1.1 + HTTP/2 connections
//! - [`edge`]: head limits, canonical paths, request ids
//! - [`pipeline`]: the stages (`route`, `dispatch`, …), in order
//! - [`contract`]: OpenAPI loading, operation router, examples
//! - [`facade`]: answers from the contract
//! - [`upstream`]: the proxy to real sandbox backends
//! - [`refusal`]: every refusal, rendered as problem+json
//! - [`jwt`], [`mtls`], [`issuer`]: token and certificate credentials, the
//!   built-in OAuth token issuer
//! - [`tenants`], [`store`]: tenants and their credentials, the store
//! - [`config`], [`sandbox`]: typed configuration and its compiled form
//! - [`gateway`], [`admin`], [`run`]: the handlers and their lifecycle
//! - [`telemetry`]: logs and metrics; [`trace_context`]: W3C `traceparent`
//! - [`analytics`]: usage events, sinks, engagement score, alerts (off the
//!   request path)
//! - [`trace`]: decision traces and the request log (`/_sandbox/requests`)

pub mod admin;
pub mod analytics;
pub mod body;
pub mod clock;
pub mod config;
pub mod contract;
pub mod contract_test;
pub mod demo;
pub mod drift;
pub mod edge;
pub mod facade;
pub mod gateway;
pub mod issuer;
pub mod jwt;
pub mod limits;
pub mod mtls;
#[cfg(feature = "otlp")]
pub mod otel;
pub mod pipeline;
pub mod refusal;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tenant_api;
pub mod tenants;
pub mod trace;
pub mod trace_context;
pub mod upstream;

pub use run::{Running, StartError, start};
pub use sandbox::Overrides;
