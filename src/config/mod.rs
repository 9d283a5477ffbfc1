//! Typed configuration of one sandbox (`sandgate.yaml`), parsed once and
//! checked at load. Every key is documented here and in
//! `docs/configuration.md`; unknown keys, wrong types and duplicate keys are
//! load errors located as `file:line`.

mod source;
pub mod units;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use source::{ConfigError, ConfigErrors, Source, parse_yaml};
pub use units::{ByteSize, Duration};

/// The root of `sandgate.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public listeners. The first one is the one `--listen` overrides.
    /// Default: one plain listener on `127.0.0.1:8080`.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// The internal admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Host names (without port) the public listeners answer for; a request
    /// for any other `Host` is refused with `misdirected_host` (421). Empty
    /// means any host is accepted.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The APIs served, each under its own path prefix.
    pub apis: Vec<ApiConfig>,
    /// Size and count limits applied at the edge, before routing.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timeouts applied at the edge.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Sandbox credentials. Without this section every API is public (no
    /// identify or admit stage); with it, every API requires sandbox
    /// credentials unless it says `auth: none`.
    pub auth: Option<AuthConfig>,
    /// Where tenants and credentials are kept. Default: `memory`.
    #[serde(default)]
    pub store: StoreConfig,
    /// Lifecycle rules of tenants.
    #[serde(default)]
    pub tenants: TenantsConfig,
    /// Decision traces and the request log (`/_sandbox/requests`).
    #[serde(default)]
    pub traces: crate::trace::config::TracesConfig,
    /// Threads serving the public listeners, each with its own event loop and
    /// its own `SO_REUSEPORT` socket (like nginx's workers). Default: the
    /// number of CPUs.
    pub workers: Option<std::num::NonZeroUsize>,
    /// Binds worker i to the i-th CPU the process may run on (round robin),
    /// its sockets asking the kernel for the connections whose packets that
    /// CPU handles (`SO_INCOMING_CPU`). Default: `false`.
    #[serde(default)]
    pub pin_workers: bool,
    /// Usage events, their sinks, workflows, milestones and alerts
    /// (`crate::analytics::config`). Default: on, with no sinks.
    #[serde(default)]
    pub analytics: crate::analytics::AnalyticsConfig,
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        addr: Spanned::new(
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            serde_saphyr::Location::UNKNOWN,
            serde_saphyr::Location::UNKNOWN,
        ),
        tls: None,
    }]
}

/// One public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to bind, e.g. `0.0.0.0:8443`. Port 0 picks a free port.
    pub addr: Spanned<SocketAddr>,
    /// TLS settings; without them the listener speaks plain HTTP/1.1 and h2c.
    pub tls: Option<TlsConfig>,
}

/// TLS (and optionally mTLS) for one listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain, leaf first.
    pub cert: Spanned<PathBuf>,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// PEM bundle of the CA certificates that client certificates must chain to.
    /// Required when `client_auth` is `optional` or `required`.
    pub client_ca: Option<Spanned<PathBuf>>,
    /// Whether clients present certificates: `off` (never asked), `optional`
    /// (asked; a presented certificate must verify), `required` (the handshake
    /// fails without a valid one). Default: `optional` when `client_ca` is set,
    /// otherwise `off`.
    pub client_auth: Option<Spanned<ClientAuth>>,
}

/// Client-certificate policy of a TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is requested.
    Off,
    /// A certificate is requested; one that is presented must verify.
    Optional,
    /// A valid certificate is required to complete the handshake.
    Required,
}

/// The internal admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener. Keep it on a private interface.
    /// Default: `127.0.0.1:9090`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Name of the environment variable holding the service token that
    /// authorizes `/internal/*` (`Authorization: Bearer <token>`). The token
    /// itself is never written in the configuration. While the variable is
    /// unset or empty, `/internal/*` answers 503 `admin_token_unset`.
    /// Default: `SANDGATE_ADMIN_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: default_token_env(),
        }
    }
}

fn default_token_env() -> String {
    "SANDGATE_ADMIN_TOKEN".into()
}

/// How callers prove they are a sandbox tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Sandbox API keys (`Authorization: Bearer <key>` or `X-Api-Key`).
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Sandbox token issuers whose JWTs are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Issuers of production tokens: such a token is refused with
    /// `production_credentials`, naming the sandbox issuers instead.
    #[serde(default)]
    pub production_issuers: Vec<String>,
    /// Client certificates as credentials (on TLS listeners with
    /// `client_ca`): which part of the verified certificate names the client.
    pub mtls: Option<MtlsConfig>,
    /// sandgate's own OAuth 2.0 token issuer (client credentials grant) for
    /// tenants without an identity provider of their own.
    pub builtin_issuer: Option<BuiltinIssuerConfig>,
}

/// The built-in token issuer: `POST /oauth/token`,
/// `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration` on
/// the public listeners. Its tokens are verified like any other issuer's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinIssuerConfig {
    /// The `iss` of its tokens and the base URL of its endpoints in the
    /// discovery document. Default: the sandbox's public URL (first host,
    /// first listener).
    pub issuer: Option<Spanned<String>>,
    /// The `aud` its tokens carry (the first one) and accept. Default:
    /// `[issuer]`.
    pub audiences: Option<Vec<String>>,
    /// PKCS#8 PEM file of its ES256 (P-256) signing key, relative to the
    /// sandbox directory. Generated (mode 0600) on first start when
    /// absent; the bundled demo uses a key kept in memory only.
    pub signing_key: Spanned<PathBuf>,
    /// Lifetime of its tokens (never past the sandbox's own expiry), at
    /// most 24h. Default: `1h`.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Duration,
    /// Scopes it may grant. A token request without `scope` gets all of
    /// them; one asking for others is refused with `invalid_scope`.
    /// Default: `[sandbox]`.
    #[serde(default = "default_builtin_scopes")]
    pub scopes: Vec<String>,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_builtin_scopes() -> Vec<String> {
    vec!["sandbox".into()]
}

/// How a verified client certificate maps to a tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// `san_uri` (e.g. a SPIFFE id; exactly one URI SAN), `san_dns` (exactly
    /// one DNS SAN), `subject_cn`, or `fingerprint` (SHA-256 of the
    /// certificate, hex). The value is matched against the tenant's
    /// `mtls_identities`.
    pub identity: MtlsIdentity,
}

/// The certificate field that names a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsIdentity {
    /// The single URI subject alternative name.
    SanUri,
    /// The single DNS subject alternative name.
    SanDns,
    /// The subject's common name.
    SubjectCn,
    /// The SHA-256 fingerprint of the certificate (lower-case hex).
    Fingerprint,
}

impl MtlsIdentity {
    /// The name used in configuration and refusals.
    pub const fn as_str(self) -> &'static str {
        match self {
            MtlsIdentity::SanUri => "san_uri",
            MtlsIdentity::SanDns => "san_dns",
            MtlsIdentity::SubjectCn => "subject_cn",
            MtlsIdentity::Fingerprint => "fingerprint",
        }
    }
}

/// One sandbox JWT issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: Spanned<String>,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    /// Where its signing keys are.
    pub jwks: JwksConfig,
    /// Accepted signing algorithms (`RS256`, `ES256`, `EdDSA`, …). `none`
    /// and HMAC algorithms are never accepted. Default: `[RS256, ES256]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Spanned<String>>,
    /// The claim naming the tenant (the sandbox id). Default: `tenant`.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the scopes (a space-separated string or a list).
    /// Default: `scope`.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, at most 60s. Default: `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
}

/// Where an issuer's keys come from: exactly one of `file` and `url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// A JWKS (JSON Web Key Set) file, relative to the sandbox directory,
    /// read at (re)load.
    pub file: Option<Spanned<PathBuf>>,
    /// A JWKS URL (`https://`; plain `http://` only to a loopback address).
    /// Fetched at start, in the background every `refresh`, and at once
    /// when a token names a key id the set lacks, at most once every
    /// `min_refetch_interval`. While the issuer is unreachable the last
    /// good key set stays in use. Keys named by a token (`jku`, `x5u`,
    /// `jwk`) are never fetched.
    pub url: Option<Spanned<String>>,
    /// How old a fetched key set may get before it is fetched again in the
    /// background. Default: `10m`.
    #[serde(default = "default_jwks_refresh")]
    pub refresh: Duration,
    /// The least time between two fetches caused by unknown key ids, so
    /// tokens with made-up `kid`s cannot make the gateway hammer the
    /// issuer. Default: `30s`; at least `1s`.
    #[serde(default = "default_jwks_min_refetch")]
    pub min_refetch_interval: Duration,
    /// Time allowed for one fetch (connect, TLS and body). Default: `5s`.
    #[serde(default = "default_jwks_timeout")]
    pub timeout: Duration,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_algorithms() -> Vec<Spanned<String>> {
    ["RS256", "ES256"]
        .into_iter()
        .map(|a| {
            Spanned::new(
                a.to_owned(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            )
        })
        .collect()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_scopes_claim() -> String {
    "scope".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Sandbox API keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// The prefix every sandbox key has. Default: `sk_sandbox_`.
    pub prefix: String,
    /// Prefixes of production keys: such a key is refused with
    /// `production_credentials`, saying where to get sandbox credentials.
    /// Default: `[sk_live_]`.
    pub live_prefixes: Vec<String>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            prefix: "sk_sandbox_".into(),
            live_prefixes: vec!["sk_live_".into()],
        }
    }
}

/// Whether an API requires credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiAuth {
    /// Sandbox credentials are required (the default when `auth` is configured).
    Required,
    /// The API is public.
    None,
}

/// Where tenants, credentials and archives are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (lost on exit), `file` (embedded redb database: survives
    /// restarts and `kill -9`) or `redis` (shared by every replica).
    pub kind: Spanned<StoreKind>,
    /// The Redis URL for `kind: redis` (`redis://host:port/db`).
    pub url: Option<Spanned<String>>,
    /// How long a Redis operation may take before it counts as failed.
    /// Default: `50ms`.
    #[serde(default = "default_store_timeout")]
    pub timeout: Duration,
    /// What a limit decision does when Redis fails or is too slow:
    /// `fail_closed` (refuse, 503 `limits_unavailable`) or `fail_open`
    /// (allow, and count it). Default: `fail_closed`.
    #[serde(default)]
    pub on_error: OnStoreError,
    /// The database file for `kind: file`, relative to the sandbox directory
    /// (to the working directory for the bundled demo). Default:
    /// `data/sandgate.redb`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: Spanned::new(
                StoreKind::Memory,
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
            path: default_store_path(),
            url: None,
            timeout: default_store_timeout(),
            on_error: OnStoreError::default(),
        }
    }
}

fn default_store_timeout() -> Duration {
    Duration::from_millis(50)
}

/// What limit decisions do while the store is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse (503 `limits_unavailable`).
    #[default]
    FailClosed,
    /// Allow, and count the decision in a metric.
    FailOpen,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("data/sandgate.redb")
}

/// A store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In memory.
    Memory,
    /// Embedded redb file.
    File,
    /// Redis (or Valkey), shared by replicas.
    Redis,
}

/// Lifecycle rules of tenants (sandboxes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// Most sandboxes that may be active at once; provisioning beyond it is
    /// refused with 429 `capacity_reached`. Default: 1000.
    pub max_active_sandboxes: usize,
    /// Life of a new sandbox when the request gives no `expiry_days`. Default: 14.
    pub default_expiry_days: u32,
    /// Longest total life of a sandbox, extensions included. Default: 30.
    pub max_lifetime_days: u32,
    /// How often the background sweep marks sandboxes that have expired
    /// (requests check expiry themselves; the sweep records it, logs it and
    /// counts it). Default: `1m`.
    pub sweep_interval: Duration,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            max_active_sandboxes: 1000,
            default_expiry_days: 14,
            max_lifetime_days: 30,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// How an API's requests are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Proxied to a real sandbox backend (`upstream`).
    Upstream,
    /// Answered by sandgate from the API's contract (`contract`).
    Facade,
    /// Answered by a scenario rule or fixture when one matches, otherwise
    /// proxied to the backend (`upstream`).
    Hybrid,
    /// Proxied to the backend, and every JSON exchange written into the
    /// API's `fixtures` directory as a fixture (secrets and card numbers
    /// scrubbed), to replay later in `facade` or `hybrid` mode.
    Record,
}

impl Mode {
    /// Whether requests of this mode may reach the backend.
    pub const fn uses_upstream(self) -> bool {
        !matches!(self, Mode::Facade)
    }

    /// The name used in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Upstream => "upstream",
            Mode::Facade => "facade",
            Mode::Hybrid => "hybrid",
            Mode::Record => "record",
        }
    }
}

/// One API served under a path prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unique name of the API, used in refusals, metrics and logs.
    pub name: Spanned<String>,
    /// Path prefix under which the API is served, e.g. `/payments`. The
    /// longest matching prefix wins; it matches whole path segments only.
    pub prefix: Spanned<String>,
    /// `upstream` (proxy to `upstream.url`), `facade` (answer from
    /// `contract`), `hybrid` (scenario rules and fixtures first, else the
    /// backend) or `record` (proxy, and write the exchanges as fixtures).
    pub mode: Spanned<Mode>,
    /// OpenAPI 3.0 document (YAML or JSON) describing the API. Required for
    /// `facade`; optional for `upstream`, where it makes unknown operations
    /// refused at the gateway.
    pub contract: Option<Spanned<PathBuf>>,
    /// The real sandbox backend. Required for `upstream`.
    pub upstream: Option<UpstreamConfig>,
    /// `required` (sandbox credentials, the default when the top-level `auth`
    /// section exists) or `none` (public).
    pub auth: Option<ApiAuth>,
    /// Remove `prefix` from the path before matching the contract and before
    /// proxying. Default: `true`.
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// Largest request body accepted for this API (overrides `limits.max_body`).
    pub max_body: Option<ByteSize>,
    /// Checking requests against the contract: `enforce` (refuse what does
    /// not match: 400 `invalid_request`, 415 `unsupported_media_type`),
    /// `report` (let it through, with a `Sandgate-Validation` header
    /// listing what is wrong) or `off`. Default: `enforce`. Without a
    /// contract there is nothing to check.
    #[serde(default)]
    pub validate: ValidateMode,
    /// Scenario rules for a `facade` API (a YAML file relative to the
    /// sandbox directory): tables that key an outcome on a request value,
    /// such as test card numbers. Needs `contract`.
    pub scenarios: Option<Spanned<PathBuf>>,
    /// A directory of fixture files (`*.yaml`) for a `facade` API, relative
    /// to the sandbox directory: exchanges matched on method, path, query,
    /// headers and body, answered after scenario rules and before the
    /// contract's examples.
    pub fixtures: Option<Spanned<PathBuf>>,
    /// What `record` mode writes (it writes into `fixtures`).
    #[serde(default)]
    pub record: RecordConfig,
    /// Per-tenant state for a `facade` API (`state: {}` turns it on):
    /// resources inferred from the contract, overridable here. Absent: the
    /// API is stateless.
    pub state: Option<crate::state::config::StateConfig>,
    /// Checking live backend responses against the contract (`upstream`,
    /// `hybrid` and `record` APIs that have a `contract`).
    #[serde(default)]
    pub drift: DriftConfig,
    /// What a dry-run write (`X-Dry-Run: true` on POST, PUT, PATCH or
    /// DELETE) does on an API that reaches a backend (`upstream`, `hybrid`,
    /// `record`): `simulate` (answer from the facade, never the backend),
    /// `forward` (the backend understands `X-Dry-Run`: forward the request
    /// with it) or `refuse` (400 `dry_run_unsupported`). A `facade` API
    /// always simulates. Default: `simulate`.
    #[serde(default)]
    pub dry_run: DryRunMode,
    /// Writes that must be sent as dry runs (428 `dry_run_required`
    /// otherwise): each rule names methods, operations and/or scopes, and
    /// a write matching every condition of one rule needs `X-Dry-Run: true`.
    #[serde(default)]
    pub require_dry_run: Vec<RequireDryRun>,
    /// `Idempotency-Key` handling (Stripe's semantics).
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
}

/// What a dry-run write does on an API that reaches a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunMode {
    /// Answer from the facade (the contract's answer for the operation);
    /// the backend is never contacted.
    #[default]
    Simulate,
    /// The backend declares it understands `X-Dry-Run: true`: forward the
    /// request with that header.
    Forward,
    /// Refuse dry-run writes (400 `dry_run_unsupported`).
    Refuse,
}

impl DryRunMode {
    /// The name used in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            DryRunMode::Simulate => "simulate",
            DryRunMode::Forward => "forward",
            DryRunMode::Refuse => "refuse",
        }
    }
}

/// One `require_dry_run` rule. Every condition given must hold; an empty
/// list is no condition. A rule with no condition at all covers every write.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireDryRun {
    /// Write methods the rule covers (`POST`, `PUT`, `PATCH`, `DELETE`).
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// operationIds of the API's contract the rule covers.
    #[serde(default)]
    pub operations: Vec<Spanned<String>>,
    /// Token scopes: the rule covers callers holding any of them (for
    /// example `try_it` for the developer portal's browser tokens). API
    /// keys carry no scopes, so a rule with scopes never covers them.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `Idempotency-Key` handling of one API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// Methods whose requests honour `Idempotency-Key` (among `POST`,
    /// `PUT`, `PATCH`, `DELETE`); empty turns it off. Default: `[POST]`.
    pub methods: Vec<Spanned<String>>,
    /// How long a completed response is kept and replayed. Default: `24h`.
    pub ttl: Duration,
    /// Largest response body stored; a larger response is passed on and
    /// not stored (the key is released, so a retry runs again).
    /// Default: `1MiB`.
    pub max_response: ByteSize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            methods: vec![Spanned::new(
                "POST".to_owned(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            )],
            ttl: Duration::from_secs(24 * 3600),
            max_response: ByteSize::mib(1),
        }
    }
}

/// The methods a dry run or an idempotency key applies to.
pub const WRITE_METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// How `record` mode writes fixtures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Body field names (at any depth, case-insensitive) whose values are
    /// replaced by `[scrubbed]` in recorded requests and responses, on top
    /// of the built-in ones (`password`, `secret`, `client_secret`,
    /// `api_key`, `apikey`, `token`, `access_token`, `refresh_token`,
    /// `id_token`, `authorization`, `cvc`, `cvv`, `pin`).
    pub scrub_fields: Vec<String>,
    /// Largest response body recorded; larger exchanges are proxied but not
    /// recorded. Default: `1MiB`.
    pub max_body: ByteSize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            scrub_fields: Vec::new(),
            max_body: ByteSize::mib(1),
        }
    }
}

/// How live backend responses are checked against the contract.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Fraction of responses checked, from `0` (never) to `1` (every one).
    /// Default: `1`.
    pub sample: Spanned<f64>,
    /// Largest response body checked; a larger one is passed on unchecked.
    /// Default: `1MiB`.
    pub max_body: ByteSize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            sample: Spanned::new(
                1.0,
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
            max_body: ByteSize::mib(1),
        }
    }
}

fn yes() -> bool {
    true
}

/// What the validate stage does with a request that does not match the contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidateMode {
    /// Refuse it.
    #[default]
    Enforce,
    /// Let it through, saying what is wrong in a response header.
    Report,
    /// Do not check.
    Off,
}

/// The backend of an `upstream` API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, `http://` or `https://`, optionally with a base path that is
    /// put in front of the request path. Must not carry credentials.
    pub url: Spanned<String>,
    /// Time allowed for the backend to send its response head (→ 504
    /// `upstream_timeout`). Must be shorter than `timeouts.request`, which
    /// bounds the whole exchange. Default: `25s`.
    #[serde(default = "default_upstream_timeout")]
    pub timeout: Spanned<Duration>,
    /// Time allowed to open a connection (for an `http` backend, resolving
    /// its host and connecting; for `https`, each TCP attempt). Default: `5s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Extra PEM CA bundle trusted for an `https` backend, on top of the
    /// system roots.
    pub ca: Option<Spanned<PathBuf>>,
    /// How long an idle pooled connection to the backend is kept. Default: `90s`.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout: Duration,
    /// Largest number of idle connections kept to the backend by each worker
    /// thread (each worker has its own pool). Default: 64.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
}

fn default_upstream_timeout() -> Spanned<Duration> {
    Spanned::new(
        Duration::from_secs(25),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    64
}

/// Limits enforced at the edge. Requests over a limit are refused with
/// problem+json; far beyond it (twice the header limits) hyper itself closes
/// the exchange.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most request headers accepted (→ 431). Default: 100.
    pub max_headers: usize,
    /// Largest total size of the request head's header fields (→ 431). Default: `64KiB`.
    pub max_header_bytes: ByteSize,
    /// Longest request URI (→ 414). Default: `8KiB`.
    pub max_uri: ByteSize,
    /// Largest `Authorization` header (→ 431). Default: `8KiB`.
    pub max_authorization: ByteSize,
    /// Largest request body (→ 413), checked on `Content-Length` before reading.
    /// Default: `1MiB`. Each API can override it with `max_body`.
    pub max_body: ByteSize,
    /// Most open connections per listener; further clients wait in the
    /// kernel's accept queue. Default: 10000.
    pub max_connections: usize,
    /// HTTP/2: most concurrent streams per connection. Default: 100.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: initial flow-control window of a stream. Default: `64KiB`.
    pub h2_stream_window: ByteSize,
    /// HTTP/2: initial flow-control window of a connection. Default: `1MiB`.
    pub h2_connection_window: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_header_bytes: ByteSize::kib(64),
            max_uri: ByteSize::kib(8),
            max_authorization: ByteSize::kib(8),
            max_body: ByteSize::mib(1),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_stream_window: ByteSize::kib(64),
            h2_connection_window: ByteSize::mib(1),
        }
    }
}

/// Timeouts enforced at the edge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Time a client has to send a complete request head, and the longest an
    /// idle HTTP/1.1 keep-alive connection is kept open. Default: `10s`.
    pub header_read: Duration,
    /// Time allowed for the TLS handshake. Default: `10s`.
    pub tls_handshake: Duration,
    /// Time from the request head to the response head, body upload included
    /// (→ 408 `request_timeout`). Default: `30s`.
    pub request: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish before the
    /// process exits anyway. Default: `30s`.
    pub shutdown_grace: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            request: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Reads and parses `sandgate.yaml` of `source`, then checks everything
    /// that does not need another file. All problems are reported at once.
    pub fn load(source: &Source) -> Result<Config, ConfigErrors> {
        let (config, errors) = Self::parse(source)?;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses `sandgate.yaml`; a syntax or type error is fatal, semantic
    /// problems are returned beside the parsed value so a caller can go on
    /// to find problems in the files it names too.
    pub fn parse(source: &Source) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let rel = Path::new(Source::MAIN_FILE);
        let file = source.display_path(rel);
        let text = source
            .read_to_string(rel)
            .map_err(|m| ConfigErrors(vec![ConfigError::new(&file, 0, m)]))?;
        let config: Config = parse_yaml(&file, &text).map_err(|e| ConfigErrors(vec![e]))?;
        let errors = config.check(&file);
        Ok((config, errors))
    }

    /// Semantic checks of `sandgate.yaml` alone.
    fn check(&self, file: &Path) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |line: u64, msg: String| errors.push(ConfigError::new(file, line, msg));

        for (line, message) in self.traces.check() {
            err(line, message);
        }
        if self.listeners.is_empty() {
            err(
                0,
                "`listeners` is empty: at least one public listener is needed".into(),
            );
        }
        let mut addrs = HashSet::new();
        for l in &self.listeners {
            if !addrs.insert(l.addr.value) && l.addr.value.port() != 0 {
                err(
                    l.addr.referenced.line(),
                    format!("listener address {} is listed twice", l.addr.value),
                );
            }
            if let Some(tls) = &l.tls
                && let Some(auth) = &tls.client_auth
                && auth.value != ClientAuth::Off
                && tls.client_ca.is_none()
            {
                let mode = if auth.value == ClientAuth::Required {
                    "required"
                } else {
                    "optional"
                };
                err(
                    auth.referenced.line(),
                    format!(
                        "`client_auth: {mode}` needs `client_ca`, the CA bundle client certificates are checked against"
                    ),
                );
            }
        }
        if self.apis.is_empty() {
            err(
                0,
                "`apis` is empty: a sandbox serves at least one API".into(),
            );
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for api in &self.apis {
            let name = &api.name.value;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                err(
                    api.name.referenced.line(),
                    format!(
                        "API name `{name}` must be non-empty and use only letters, digits, `_` and `-`"
                    ),
                );
            }
            if !names.insert(name.clone()) {
                err(
                    api.name.referenced.line(),
                    format!("API name `{name}` is used twice"),
                );
            }
            let prefix = &api.prefix.value;
            if !prefix.starts_with('/')
                || (prefix.len() > 1 && prefix.ends_with('/'))
                || prefix.contains("//")
                || prefix.split('/').any(|s| s == "." || s == "..")
            {
                err(
                    api.prefix.referenced.line(),
                    format!(
                        "prefix `{prefix}` must start with `/`, not end with `/`, and have no empty, `.` or `..` segments"
                    ),
                );
            } else if !prefixes.insert(prefix.clone()) {
                err(
                    api.prefix.referenced.line(),
                    format!("prefix `{prefix}` is used by two APIs"),
                );
            }
            match api.mode.value {
                Mode::Facade if api.contract.is_none() => err(
                    api.mode.referenced.line(),
                    format!(
                        "API `{name}` has `mode: facade` but no `contract`: the facade answers from the OpenAPI contract"
                    ),
                ),
                m if m.uses_upstream() && api.upstream.is_none() => err(
                    api.mode.referenced.line(),
                    format!(
                        "API `{name}` has `mode: {}` but no `upstream` section with the backend `url`",
                        m.as_str()
                    ),
                ),
                Mode::Hybrid if api.scenarios.is_none() && api.fixtures.is_none() => err(
                    api.mode.referenced.line(),
                    format!(
                        "API `{name}` has `mode: hybrid` but neither `scenarios` nor `fixtures`: hybrid answers from them when they match, else proxies"
                    ),
                ),
                Mode::Record if api.fixtures.is_none() => err(
                    api.mode.referenced.line(),
                    format!(
                        "API `{name}` has `mode: record` but no `fixtures` directory to write the recordings into"
                    ),
                ),
                _ => {}
            }
            let sample = api.drift.sample.value;
            if !(0.0..=1.0).contains(&sample) {
                err(
                    api.drift.sample.referenced.line(),
                    format!("API `{name}`: drift.sample {sample} must be between 0 and 1"),
                );
            }
            if let Some(up) = &api.upstream {
                if let Err(m) = check_upstream_url(&up.url.value) {
                    err(up.url.referenced.line(), m);
                }
                if up.timeout.value.get().is_zero() || up.connect_timeout.get().is_zero() {
                    err(
                        up.url.referenced.line(),
                        format!("API `{name}`: upstream timeouts must be greater than zero"),
                    );
                }
                if up.timeout.value >= self.timeouts.request {
                    let line = match up.timeout.referenced.line() {
                        0 => up.url.referenced.line(),
                        l => l,
                    };
                    err(
                        line,
                        format!(
                            "API `{name}`: upstream timeout {} must be shorter than `timeouts.request` ({}), or a slow backend is reported as a slow client",
                            up.timeout.value, self.timeouts.request
                        ),
                    );
                }
            }
            let methods = api
                .require_dry_run
                .iter()
                .flat_map(|r| r.methods.iter().map(|m| (m, "require_dry_run")))
                .chain(api.idempotency.methods.iter().map(|m| (m, "idempotency")));
            for (m, key) in methods {
                if !WRITE_METHODS.contains(&m.value.as_str()) {
                    err(
                        m.referenced.line(),
                        format!(
                            "API `{name}`: {key} method `{}` must be one of {}",
                            m.value,
                            WRITE_METHODS.join(", ")
                        ),
                    );
                }
            }
            if api.idempotency.ttl.get().is_zero() {
                err(
                    0,
                    format!("API `{name}`: idempotency.ttl must be greater than zero"),
                );
            }
        }
        match (&self.store.kind.value, &self.store.url) {
            (StoreKind::Redis, None) => err(
                self.store.kind.referenced.line(),
                "`store.kind: redis` needs `store.url` (e.g. redis://127.0.0.1:6379/0)".into(),
            ),
            (StoreKind::Redis, Some(u))
                if !(u.value.starts_with("redis://") || u.value.starts_with("rediss://")) =>
            {
                err(
                    u.referenced.line(),
                    format!(
                        "store.url `{}` must start with redis:// or rediss://",
                        u.value
                    ),
                )
            }
            (StoreKind::Memory | StoreKind::File, Some(u)) => err(
                u.referenced.line(),
                "`store.url` is only for `kind: redis`".into(),
            ),
            _ => {}
        }
        if self.store.timeout.get().is_zero() {
            err(
                self.store.kind.referenced.line(),
                "store.timeout must be greater than zero".into(),
            );
        }
        for host in &self.hosts {
            let has_port = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()));
            if host.is_empty() || host.contains(['/', ' ', '[', ']']) || has_port {
                err(
                    0,
                    format!(
                        "`hosts` entry `{host}` must be a bare host name or IP address, without port or brackets (`::1`, not `[::1]:8080`)"
                    ),
                );
            }
        }
        let l = &self.limits;
        if l.max_headers == 0
            || l.max_header_bytes.0 < 1024
            || l.max_uri.0 < 64
            || l.max_connections == 0
            || l.h2_max_concurrent_streams == 0
        {
            err(0, "`limits`: max_headers, max_connections and h2_max_concurrent_streams must be above zero, max_header_bytes at least 1KiB, max_uri at least 64B".into());
        }
        if l.h2_stream_window.0 < 65_535
            || l.h2_stream_window.0 > (1 << 31) - 1
            || l.h2_connection_window.0 < 65_535
            || l.h2_connection_window.0 > (1 << 31) - 1
        {
            err(
                0,
                "`limits`: HTTP/2 windows must be between 65535 and 2147483647 bytes".into(),
            );
        }
        if let Some(a) = &self.auth {
            for iss in &a.issuers {
                if a.production_issuers.contains(&iss.issuer.value) {
                    err(
                        iss.issuer.referenced.line(),
                        format!(
                            "issuer `{}` is also listed in `production_issuers`",
                            iss.issuer.value
                        ),
                    );
                }
                if iss.audiences.is_empty() {
                    err(
                        iss.issuer.referenced.line(),
                        format!("issuer `{}` needs at least one audience", iss.issuer.value),
                    );
                }
                match (&iss.jwks.file, &iss.jwks.url) {
                    (Some(_), Some(_)) | (None, None) => err(
                        iss.issuer.referenced.line(),
                        format!(
                            "issuer `{}`: `jwks` needs exactly one of `file` and `url`",
                            iss.issuer.value
                        ),
                    ),
                    (None, Some(url)) => {
                        if let Err(m) = check_jwks_url(&url.value) {
                            err(url.referenced.line(), m);
                        }
                    }
                    (Some(_), None) => {}
                }
                if iss.jwks.min_refetch_interval < Duration::from_secs(1)
                    || iss.jwks.refresh < iss.jwks.min_refetch_interval
                    || iss.jwks.timeout.get().is_zero()
                {
                    err(
                        iss.issuer.referenced.line(),
                        format!(
                            "issuer `{}`: `jwks.min_refetch_interval` must be at least 1s and at most `jwks.refresh`, and `jwks.timeout` above zero",
                            iss.issuer.value
                        ),
                    );
                }
                if iss.leeway > Duration::from_secs(60) {
                    err(
                        iss.issuer.referenced.line(),
                        format!(
                            "issuer `{}`: leeway {} is over the 60s maximum",
                            iss.issuer.value, iss.leeway
                        ),
                    );
                }
                for alg in &iss.algorithms {
                    if !matches!(
                        alg.value.as_str(),
                        "RS256"
                            | "RS384"
                            | "RS512"
                            | "PS256"
                            | "PS384"
                            | "PS512"
                            | "ES256"
                            | "ES384"
                            | "EdDSA"
                    ) {
                        err(
                            alg.referenced.line(),
                            format!(
                                "algorithm `{}` is not accepted; use RS256/384/512, PS256/384/512, ES256/384 or EdDSA (never `none` or HMAC)",
                                alg.value
                            ),
                        );
                    }
                }
            }
            if let Some(b) = &a.builtin_issuer {
                let line = b.signing_key.referenced.line();
                if b.token_ttl.get() < std::time::Duration::from_secs(60)
                    || b.token_ttl.get() > std::time::Duration::from_secs(86_400)
                {
                    err(
                        line,
                        format!(
                            "`auth.builtin_issuer.token_ttl` {} must be between 1m and 24h",
                            b.token_ttl
                        ),
                    );
                }
                if b.audiences.as_ref().is_some_and(Vec::is_empty)
                    || b.scopes.iter().any(|s| {
                        s.is_empty()
                            || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
                    })
                {
                    err(line, "`auth.builtin_issuer`: `audiences` must not be empty, and scopes must be non-empty words without spaces or quotes".into());
                }
                if let Some(iss) = &b.issuer
                    && (a.production_issuers.contains(&iss.value)
                        || a.issuers.iter().any(|i| i.issuer.value == iss.value))
                {
                    err(
                        iss.referenced.line(),
                        format!(
                            "`auth.builtin_issuer.issuer` `{}` is also a configured or production issuer",
                            iss.value
                        ),
                    );
                }
            }
            let k = &a.api_keys;
            if k.prefix.len() < 4
                || k.live_prefixes.iter().any(|l| {
                    l.is_empty() || l.starts_with(&k.prefix) || k.prefix.starts_with(l.as_str())
                })
            {
                err(0, "`auth.api_keys`: `prefix` must be at least 4 characters, and no live prefix may be empty or overlap it".into());
            }
        }
        for api in &self.apis {
            if api.auth == Some(ApiAuth::Required) && self.auth.is_none() {
                err(
                    api.name.referenced.line(),
                    format!(
                        "API `{}` has `auth: required` but there is no top-level `auth` section",
                        api.name.value
                    ),
                );
            }
        }
        let tc = &self.tenants;
        if tc.sweep_interval.get() < std::time::Duration::from_secs(1) {
            err(0, "`tenants.sweep_interval` must be at least 1s".into());
        }
        if tc.max_active_sandboxes == 0
            || tc.default_expiry_days == 0
            || tc.default_expiry_days > tc.max_lifetime_days
        {
            err(0, "`tenants`: max_active_sandboxes and default_expiry_days must be above zero, and default_expiry_days at most max_lifetime_days".into());
        }
        if self.admin.token_env.is_empty() {
            err(
                0,
                "`admin.token_env` must name an environment variable".into(),
            );
        }
        let t = &self.timeouts;
        if t.header_read.get().is_zero()
            || t.request.get().is_zero()
            || t.tls_handshake.get().is_zero()
        {
            err(
                0,
                "`timeouts`: header_read, tls_handshake and request must be greater than zero"
                    .into(),
            );
        }
        errors
    }
}

/// Checks a JWKS URL: `https://`, or `http://` to a loopback host only
/// (keys fetched in the clear could be swapped on the way).
fn check_jwks_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("jwks url `{url}` is not a URL: {e}"))?;
    let Some(host) = uri.host() else {
        return Err(format!("jwks url `{url}` has no host"));
    };
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        Some("http") => Err(format!(
            "jwks url `{url}` must use https:// (plain http:// is accepted only for a loopback address): keys fetched in the clear could be replaced on the way"
        )),
        _ => Err(format!("jwks url `{url}` must start with https://")),
    }
}

/// Checks an upstream base URL: http(s), a host, no credentials, no query.
fn check_upstream_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("upstream url `{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "upstream url `{url}` must start with http:// or https://"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("upstream url `{url}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("upstream url must not carry credentials (user:password@); give the backend's credentials another way".into());
    }
    if uri.query().is_some() {
        return Err(format!("upstream url `{url}` must not have a query string"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests;
