//! A compiled sandbox: the configuration after every file it names has been
//! read, every contract compiled into a router, every backend given a
//! connection pool and every TLS listener its rustls configuration. Built
//! once per (re)load and swapped in atomically; requests never see a
//! half-loaded sandbox.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::{
    ApiAuth, ApiKeysConfig, Config, ConfigError, ConfigErrors, LimitsConfig, Mode, Source,
    StoreConfig, TenantsConfig, TimeoutsConfig,
};
use crate::contract::Contract;
use crate::telemetry::ApiMetrics;
use crate::upstream::Upstream;

/// Command-line overrides applied on top of `sandgate.yaml`.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the address of the first public listener (`--listen`).
    pub listen: Option<SocketAddr>,
    /// Replaces the admin listener's address (`--admin-listen`).
    pub admin_listen: Option<SocketAddr>,
}

/// One public listener, ready to bind.
#[derive(Debug)]
pub struct Listener {
    /// Address to bind.
    pub addr: SocketAddr,
    /// TLS configuration, for TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One API, compiled.
#[derive(Debug)]
pub struct Api {
    /// Unique name.
    pub name: Arc<str>,
    /// Path prefix.
    pub prefix: String,
    /// How requests are answered.
    pub mode: Mode,
    /// Whether the prefix is removed before matching and proxying.
    pub strip_prefix: bool,
    /// The compiled contract, if the API has one.
    pub contract: Option<Contract>,
    /// The backend, for `upstream` APIs.
    pub upstream: Option<Upstream>,
    /// Body limit in bytes.
    pub max_body: u64,
    /// The configuration key the body limit came from.
    pub max_body_rule: String,
    /// Whether callers must present sandbox credentials.
    pub auth_required: bool,
    /// Pre-registered metric handles (no per-request label hashing).
    pub metrics: ApiMetrics,
}

/// The compiled sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// Hosts served, lower-case; empty means any.
    pub hosts: Vec<String>,
    /// APIs, longest prefix first.
    pub apis: Vec<Api>,
    /// (name, prefix) of every API, for refusals that list them.
    pub api_list: Vec<(String, String)>,
    /// Edge limits.
    pub limits: LimitsConfig,
    /// Edge timeouts.
    pub timeouts: TimeoutsConfig,
    /// Public listeners.
    pub listeners: Vec<Listener>,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Threads serving the public listeners.
    pub workers: usize,
    /// Lifecycle rules of tenants.
    pub tenants: TenantsConfig,
    /// Sandbox API-key rules, when `auth` is configured.
    pub api_keys: Option<ApiKeysConfig>,
    /// Sandbox JWT issuers.
    pub issuers: Vec<crate::jwt::Issuer>,
    /// Production token issuers (refused with an explanation).
    pub production_issuers: Vec<String>,
    /// Which certificate field names an mTLS client, when configured.
    pub mtls_identity: Option<crate::config::MtlsIdentity>,
    /// The store's configuration (opened once at start; see `run`).
    pub store: StoreConfig,
    /// SHA-256 of the admin service token, read from `admin.token_env`.
    pub admin_token_sha256: Option<String>,
    /// The variable that holds the admin service token.
    pub admin_token_env: String,
    /// Base URL partners use, for provisioning answers.
    pub public_url: String,
}

impl Sandbox {
    /// Loads and compiles the sandbox at `source`, reporting every problem found.
    pub fn load(source: &Source, overrides: &Overrides) -> Result<Sandbox, ConfigErrors> {
        // Problems of sandgate.yaml and of the files it names are reported
        // together, so one `sandgate check` shows everything to fix.
        let (config, errors) = Config::parse(source)?;
        Self::build(config, errors, source, overrides)
    }

    fn build(
        config: Config,
        mut errors: Vec<ConfigError>,
        source: &Source,
        overrides: &Overrides,
    ) -> Result<Sandbox, ConfigErrors> {
        let file = source.display_path(Path::new(Source::MAIN_FILE));

        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let addr = match (i, overrides.listen) {
                (0, Some(a)) => a,
                _ => l.addr.value,
            };
            let tls = match &l.tls {
                None => None,
                Some(t) => match crate::server::tls::server_config(t, source, &file) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                },
            };
            listeners.push(Listener { addr, tls });
        }

        let mut issuers = Vec::new();
        for iss in config.auth.iter().flat_map(|a| &a.issuers) {
            match crate::jwt::Issuer::build(iss, source, &file) {
                Ok(i) => issuers.push(i),
                Err(e) => errors.push(e),
            }
        }
        let workers = config.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let mut apis = Vec::new();
        for a in &config.apis {
            let name = a.name.value.clone();
            let contract = match &a.contract {
                None => None,
                Some(rel) => match Contract::load(source, &rel.value) {
                    Ok(c) => Some(c),
                    Err(mut es) => {
                        // A missing file is a problem of sandgate.yaml's line.
                        for e in &mut es {
                            if e.line.is_none() && e.message.contains("does not exist") {
                                *e = ConfigError::new(
                                    &file,
                                    rel.referenced.line(),
                                    format!("API `{name}`: contract {}", e.message),
                                );
                            }
                        }
                        errors.extend(es);
                        None
                    }
                },
            };
            let upstream = match &a.upstream {
                None => None,
                Some(u) => match Upstream::build(&name, u, source, &file, workers) {
                    Ok(up) => Some(up),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                },
            };
            let (max_body, max_body_rule) = match a.max_body {
                Some(b) => (b.bytes(), format!("apis.{name}.max_body")),
                None => (config.limits.max_body.bytes(), "limits.max_body".to_owned()),
            };
            apis.push(Api {
                metrics: ApiMetrics::new(&name),
                name: Arc::from(name.as_str()),
                prefix: a.prefix.value.clone(),
                mode: a.mode.value,
                strip_prefix: a.strip_prefix,
                contract,
                upstream,
                max_body,
                max_body_rule,
                auth_required: config.auth.is_some() && a.auth != Some(ApiAuth::None),
            });
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(ConfigErrors(errors));
        }
        let public_url = public_url(&config, listeners.first().map(|l| l.addr));
        let api_list = apis
            .iter()
            .map(|a| (a.name.to_string(), a.prefix.clone()))
            .collect();
        apis.sort_by_key(|a| std::cmp::Reverse(a.prefix.len()));
        Ok(Sandbox {
            hosts: config
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            apis,
            api_list,
            limits: config.limits,
            timeouts: config.timeouts,
            listeners,
            admin_listen: overrides.admin_listen.unwrap_or(config.admin.listen),
            workers,
            public_url,
            admin_token_sha256: std::env::var(&config.admin.token_env)
                .ok()
                .filter(|t| !t.is_empty())
                .map(|t| crate::tenants::sha256_hex(&t)),
            admin_token_env: config.admin.token_env.clone(),
            tenants: config.tenants,
            mtls_identity: config
                .auth
                .as_ref()
                .and_then(|a| a.mtls.as_ref())
                .map(|m| m.identity),
            production_issuers: config
                .auth
                .as_ref()
                .map(|a| a.production_issuers.clone())
                .unwrap_or_default(),
            issuers,
            api_keys: config.auth.map(|a| a.api_keys),
            store: config.store,
        })
    }
}

/// The URL partners reach the sandbox at: the first configured host over
/// the first listener's scheme (HTTPS when it has TLS) and port (after
/// `--listen`), or the listener's own address when no host is configured.
fn public_url(config: &Config, addr: Option<SocketAddr>) -> String {
    let (Some(l), Some(addr)) = (config.listeners.first(), addr) else {
        return String::new();
    };
    let scheme = if l.tls.is_some() { "https" } else { "http" };
    match config.hosts.first() {
        Some(h) if h.contains(':') => format!("{scheme}://[{h}]:{}", addr.port()),
        Some(h) => format!("{scheme}://{h}:{}", addr.port()),
        None => format!("{scheme}://{addr}"),
    }
}
