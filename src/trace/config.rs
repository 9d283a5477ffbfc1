//! The `traces:` section of `sandgate.yaml`: decision traces and the
//! request log (see `docs/traces.md`).

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::config::{ByteSize, Duration};

/// `traces:`: what every identified tenant's request leaves behind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Whether requests of identified tenants are traced and kept (and
    /// refusals carry a `trace` link). Default: `true`.
    pub enabled: bool,
    /// Most traces kept per tenant; the oldest is overwritten first (a
    /// ring). 1 to 100000. Default: 1000.
    pub max_per_tenant: Spanned<u32>,
    /// How long a trace is kept (a TTL in the store). At least `1s`.
    /// Default: `7d`.
    pub max_age: Spanned<Duration>,
    /// Largest part of a request or response body kept in a trace; longer
    /// bodies are cut and marked `truncated`. At most `1MiB`. Default: `16KiB`.
    pub max_body: Spanned<ByteSize>,
    /// Body fields and query parameters (at any depth, case-insensitive)
    /// whose values are replaced by `[scrubbed]`, on top of the built-in
    /// ones (`password`, `secret`, `client_secret`, `api_key`, `apikey`,
    /// `token`, `access_token`, `refresh_token`, `id_token`,
    /// `authorization`, `cvc`, `cvv`, `pin`). Default: none.
    pub scrub_fields: Vec<String>,
    /// Capacity of the queue between requests and the background writer;
    /// when it is full, a new trace pushes out the oldest queued one, which
    /// is counted (`sandgate_traces_dropped_total{reason="overwritten"}`).
    /// Read at start only. 1 to 1000000. Default: 10000.
    pub queue: Spanned<usize>,
    /// The most CPU the background writer may use, in percent of one core:
    /// after each batch it pauses in proportion to the time the batch took.
    /// Under a flood, fewer (the newest) traces are written instead of
    /// slowing the requests. 1 to 100. Default: 5.
    pub writer_cpu_percent: Spanned<u8>,
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_per_tenant: spanned(1000),
            max_age: spanned(Duration::from_secs(7 * 24 * 3600)),
            max_body: spanned(ByteSize::kib(16)),
            scrub_fields: Vec::new(),
            queue: spanned(10_000),
            writer_cpu_percent: spanned(5),
        }
    }
}

impl TracesConfig {
    /// The problems of this section, as (line, message).
    pub fn check(&self) -> Vec<(u64, String)> {
        let mut errors = Vec::new();
        let n = self.max_per_tenant.value;
        if !(1..=100_000).contains(&n) {
            errors.push((
                self.max_per_tenant.referenced.line(),
                format!("`traces.max_per_tenant` is {n}; it must be between 1 and 100000"),
            ));
        }
        if self.max_age.value.get() < std::time::Duration::from_secs(1) {
            errors.push((
                self.max_age.referenced.line(),
                format!(
                    "`traces.max_age` is {}; it must be at least 1s",
                    self.max_age.value
                ),
            ));
        }
        if self.max_body.value > ByteSize::mib(1) {
            errors.push((
                self.max_body.referenced.line(),
                format!(
                    "`traces.max_body` is {}; it must be at most 1MiB",
                    self.max_body.value
                ),
            ));
        }
        let q = self.queue.value;
        if !(1..=1_000_000).contains(&q) {
            errors.push((
                self.queue.referenced.line(),
                format!("`traces.queue` is {q}; it must be between 1 and 1000000"),
            ));
        }
        let p = self.writer_cpu_percent.value;
        if !(1..=100).contains(&p) {
            errors.push((
                self.writer_cpu_percent.referenced.line(),
                format!("`traces.writer_cpu_percent` is {p}; it must be between 1 and 100"),
            ));
        }
        errors
    }
}
