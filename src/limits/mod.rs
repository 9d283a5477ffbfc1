//! Plans and their limits, read from `policies/*.yaml`, and the per-tenant
//! decisions the limit stage makes with them.
//!
//! A plan has a rate (GCRA: `requests` per `per`, bursts up to `burst`) and
//! may narrow it per API and per operation; every rule that applies to a
//! request is checked (the plan's, the API's, the operation's), most
//! specific first, and the first one that is exhausted refuses it.

pub mod cluster;
pub mod concurrency;
pub mod per_tenant;
pub mod quota;
pub mod rate;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{ConfigError, Duration, Source};
use rate::{Rate, RuleLimiter};

/// One `policies/*.yaml` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Plans by name.
    #[serde(default)]
    plans: HashMap<Spanned<String>, PlanConfig>,
    /// The plan of a tenant provisioned without one.
    default_plan: Option<Spanned<String>>,
}

/// One plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanConfig {
    /// The tenant's overall rate.
    rate: Option<RateConfig>,
    /// Requests per period.
    #[serde(default)]
    quotas: Vec<QuotaConfig>,
    /// Requests in flight at once.
    concurrency: Option<Spanned<u32>>,
    /// Per-tenant stored state (enforced by the state issue).
    storage: Option<crate::config::ByteSize>,
    /// Per-API narrower rates, by API name.
    #[serde(default)]
    apis: HashMap<Spanned<String>, ApiPlanConfig>,
}

/// A plan's rules for one API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiPlanConfig {
    /// The rate of this API's requests.
    rate: Option<RateConfig>,
    /// Per-operation rates, by operationId.
    #[serde(default)]
    operations: HashMap<Spanned<String>, OperationPlanConfig>,
}

/// A plan's rule for one operation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationPlanConfig {
    /// The rate of this operation's requests.
    rate: Option<RateConfig>,
}

/// What the in-process limits keep for one tenant on a node: its requests
/// in flight, its GCRA cells (one per rate rule it uses) and its quota
/// counters, side by side. The limit stage finds them with one lookup (or
/// none: the worker's credential cache keeps the tenant's handle), and they
/// are the cache lines the workers share for the tenant.
///
/// The counters a request changes without a lock (the in-flight count, the
/// GCRA cells) come first, and the quota counters, under the tenant's own
/// lock, sit on cache lines of their own after them: a worker changing the
/// former never takes the line of the lock from another that holds it,
/// which would make the other wait on the lock, not on a cache line.
#[derive(Debug, Default)]
#[repr(C)]
pub struct TenantState {
    /// Requests in flight (`concurrency`).
    in_flight: std::sync::atomic::AtomicU32,
    /// GCRA cells, by rule.
    rates: rate::TenantCells,
    /// Quota counters, under the tenant's own lock.
    quotas: per_tenant::Padded<std::sync::Mutex<quota::Slots>>,
}

impl TenantState {
    /// Nothing in flight, no counter in memory, every burst whole again at
    /// `now` (each rule's time): safe to forget.
    pub fn is_idle(&self, now: &rate::RuleTimes) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0
            && quota::lock(&self.quotas).is_empty()
            && self.rates.is_whole(now)
    }
}

/// Every tenant's [`TenantState`] on a node.
pub type TenantStates = per_tenant::PerTenant<TenantState>;

/// `{ requests: 1000, per: day }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaConfig {
    requests: Spanned<u64>,
    per: quota::Period,
}

/// `{ requests: 10, per: 1s, burst: 20 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateConfig {
    requests: Spanned<u32>,
    per: Duration,
    /// Default: `requests`.
    burst: Option<u32>,
}

/// Which configured rule a limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The plan's own rate.
    Plan,
    /// An API's rate in the plan.
    Api,
    /// An operation's rate in the plan.
    Operation,
}

impl Scope {
    /// The name used in headers and refusals.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Plan => "plan",
            Scope::Api => "api",
            Scope::Operation => "operation",
        }
    }
}

/// A compiled rate rule with its limiter.
#[derive(Debug)]
pub struct Rule {
    /// The config path of the rule, e.g. `plans.trial.apis.payments.rate`.
    pub path: String,
    /// The policy file and line it is written at.
    pub at: String,
    /// Which level it is.
    pub scope: Scope,
    /// Its limiter (shared with the configuration it replaced, on a reload
    /// that kept the rule as it was).
    pub limiter: Arc<RuleLimiter>,
    /// Its `RateLimit-Policy` header value, e.g. `"plan";q=20;w=2` (the
    /// same on every answer, so made once).
    pub policy: http::HeaderValue,
}

impl Rule {
    /// The `RateLimit-Policy` value of a rule of `scope` with `rate`: the
    /// burst as the quota, per the time a whole burst takes to come back.
    pub fn policy_header(scope: Scope, rate: Rate) -> http::HeaderValue {
        let burst = rate.burst.get();
        let per = rate.interval() * burst;
        let window = per.as_secs() + u64::from(per.subsec_nanos() > 0);
        let text = format!("\"{}\";q={burst};w={}", scope.as_str(), window.max(1));
        // Checked here; `from_static` below cannot fail for it.
        if http::HeaderValue::from_str(&text).is_err() {
            return http::HeaderValue::from_static("\"plan\"");
        }
        http::HeaderValue::from_static(interned(text))
    }
}

/// `text`, kept for the life of the process (once per distinct text).
///
/// A rule's `RateLimit-Policy` goes on every answer to its tenants: as a
/// static value it is copied without touching a reference count the workers
/// would share (a cache line bouncing between the cores on every request).
/// The texts are few, `"<scope>";q=<burst>;w=<seconds>`, and a reload
/// that keeps its plans adds none.
fn interned(text: String) -> &'static str {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = seen.get(text.as_str()) {
        return s;
    }
    let s: &'static str = Box::leak(text.into_boxed_str());
    seen.insert(s);
    s
}

/// The shortest interval between two requests a rate rule may set: one
/// microsecond, the resolution of the clock the cluster decides on (Redis
/// `TIME`, see [`cluster`]), so that every rule means the same on one
/// node and on N.
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_micros(1);

/// One compiled plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// The plan's name.
    pub name: String,
    /// The overall rule.
    pub rate: Option<Rule>,
    /// The plan's quotas.
    pub quotas: Vec<quota::Quota>,
    /// Requests in flight at once, when capped.
    pub concurrency: Option<u32>,
    /// Stored state allowed, in bytes (for per-tenant state).
    pub storage: Option<u64>,
    /// API name → (API rule, operationId → operation rule).
    pub apis: BTreeMap<String, (Option<Rule>, BTreeMap<String, Rule>)>,
}

impl Plan {
    /// The rules that apply to a request of `api` / `operation`, most
    /// specific first.
    pub fn rules<'a>(
        &'a self,
        api: &str,
        operation: Option<&str>,
    ) -> impl Iterator<Item = &'a Rule> {
        let by_api = self.apis.get(api);
        let op = by_api.zip(operation).and_then(|((_, ops), id)| ops.get(id));
        op.into_iter()
            .chain(by_api.and_then(|(r, _)| r.as_ref()))
            .chain(self.rate.as_ref())
    }
}

/// A tenant's standing against its plan, as the usage endpoints show it:
/// the effective plan, its rate rules, every quota with what is used and
/// when it resets, and the concurrency cap with the requests in flight.
pub async fn usage(
    plans: &Plans,
    registry: &crate::tenants::Registry,
    tenant: &crate::tenants::Tenant,
) -> Result<serde_json::Value, crate::store::StoreError> {
    use serde_json::json;
    let Some(plan) = plans
        .get(&tenant.plan)
        .or_else(|| plans.get(&plans.default_plan))
    else {
        return Ok(json!({ "plan": tenant.plan, "limits": "none" }));
    };
    let rates: Vec<_> = plan
        .rate
        .iter()
        .chain(
            plan.apis
                .values()
                .flat_map(|(r, ops)| r.iter().chain(ops.values())),
        )
        .map(|r| {
            let rate = r.limiter.rate;
            json!({
                "rule": r.path,
                "scope": r.scope.as_str(),
                "requests": rate.requests.get(),
                "per": humantime::format_duration(rate.per).to_string(),
                "burst": rate.burst.get(),
            })
        })
        .collect();
    let now = crate::tenants::now_secs();
    let quotas: Vec<_> = registry
        .quotas()
        .usage(&tenant.id, &plan.quotas, now)
        .await?
        .into_iter()
        .map(|u| {
            json!({
                "rule": u.quota.path,
                "requests": u.quota.requests,
                "per": u.quota.period.as_str(),
                "used": u.used,
                "remaining": u.quota.requests.saturating_sub(u.used),
                "resets_at": u.resets_at.map(|at| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
                    )
                    .to_string()
                }),
            })
        })
        .collect();
    Ok(json!({
        "plan": plan.name,
        "rates": rates,
        "quotas": quotas,
        "concurrency": plan.concurrency.map(|max| json!({
            "max": max,
            "in_flight": registry.in_flight().current(&tenant.id),
        })),
    }))
}

/// Every plan of the sandbox.
#[derive(Debug, Default)]
pub struct Plans {
    /// Plans by name.
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// The plan of tenants provisioned without one (`trial` when unset).
    pub default_plan: String,
}

impl Plans {
    /// The plan named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.plans.get(name)
    }

    /// Every rule of every plan.
    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.plans.values().flat_map(|plan| {
            plan.rate.iter().chain(
                plan.apis
                    .values()
                    .flat_map(|(r, ops)| r.iter().chain(ops.values())),
            )
        })
    }

    /// The time now on the clock of every rule, for
    /// [`TenantState::is_idle`].
    pub fn rule_times(&self) -> rate::RuleTimes {
        let mut times = rate::RuleTimes::default();
        for rule in self.rules() {
            times.add(&rule.limiter);
        }
        times
    }

    /// Keeps the limiter state of `previous` for every rule that has the
    /// same path and rate here, so a reload does not hand out new bursts.
    pub fn inherit(&mut self, previous: &Plans) {
        let old: HashMap<&str, &Arc<RuleLimiter>> = previous
            .rules()
            .map(|r| (r.path.as_str(), &r.limiter))
            .collect();
        for plan in self.plans.values_mut() {
            let Some(plan) = Arc::get_mut(plan) else {
                continue;
            };
            let rules = plan.rate.iter_mut().chain(
                plan.apis
                    .values_mut()
                    .flat_map(|(r, ops)| r.iter_mut().chain(ops.values_mut())),
            );
            for rule in rules {
                if let Some(kept) = old.get(rule.path.as_str())
                    && kept.rate == rule.limiter.rate
                {
                    rule.limiter = Arc::clone(kept);
                }
            }
        }
    }

    /// Loads every `policies/*.yaml` of `source` (none: no plans, no
    /// limits). `apis` lists each API with its operation ids, to check the
    /// names the plans use.
    pub fn load(
        source: &Source,
        apis: &[(String, Vec<String>)],
    ) -> Result<Plans, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut plans = BTreeMap::new();
        // Every plan written, compiled or not: a plan with an error is
        // reported once, not again by the `default_plan` that names it.
        let mut written = std::collections::BTreeSet::new();
        let mut default_plan: Option<(String, PathBuf, u64)> = None;
        for rel in source.list(Path::new("policies"), &["yaml", "yml"]) {
            let file = source.display_path(&rel);
            let text = match source.read_to_string(&rel) {
                Ok(t) => t,
                Err(m) => {
                    errors.push(ConfigError::new(&file, 0, m));
                    continue;
                }
            };
            let parsed: PolicyFile = match crate::config::parse_yaml(&file, &text) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(d) = parsed.default_plan {
                let line = d.referenced.line();
                if let Some((_, other, other_line)) = &default_plan {
                    errors.push(ConfigError::new(
                        &file,
                        line,
                        format!(
                            "`default_plan` is also set at {}:{other_line}; set it once",
                            other.display()
                        ),
                    ));
                }
                default_plan = Some((d.value, file.clone(), line));
            }
            for (name, p) in in_file_order(parsed.plans) {
                let line = name.referenced.line();
                let name = name.value;
                if !written.insert(name.clone()) {
                    errors.push(ConfigError::new(
                        &file,
                        line,
                        format!("plan `{name}` is defined twice"),
                    ));
                    continue;
                }
                match compile(&name, line, p, &file, apis) {
                    Ok(plan) => {
                        plans.insert(name, Arc::new(plan));
                    }
                    Err(mut es) => errors.append(&mut es),
                }
            }
        }
        let default_plan = match default_plan {
            Some((name, file, line)) => {
                if !written.contains(&name) {
                    errors.push(ConfigError::new(
                        &file,
                        line,
                        format!(
                            "`default_plan: {name}` names no plan (plans: {})",
                            plans.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                name
            }
            None => "trial".to_owned(),
        };
        if errors.is_empty() {
            Ok(Plans {
                plans,
                default_plan,
            })
        } else {
            Err(errors)
        }
    }
}

/// Map entries in the order they are written.
fn in_file_order<T>(map: HashMap<Spanned<String>, T>) -> Vec<(Spanned<String>, T)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by_key(|(k, _)| (k.referenced.line(), k.referenced.column()));
    v
}

fn compile(
    name: &str,
    plan_line: u64,
    p: PlanConfig,
    file: &Path,
    apis: &[(String, Vec<String>)],
) -> Result<Plan, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if let Some(c) = &p.concurrency
        && c.value == 0
    {
        errors.push(ConfigError::new(
            file,
            c.referenced.line(),
            format!("plans.{name}.concurrency must be at least 1"),
        ));
    }
    let mut quotas = Vec::new();
    for (i, q) in p.quotas.into_iter().enumerate() {
        let path = format!("plans.{name}.quotas[{i}]");
        if q.requests.value == 0 {
            errors.push(ConfigError::new(
                file,
                q.requests.referenced.line(),
                format!("{path}: `requests` must be at least 1"),
            ));
            continue;
        }
        if quotas.iter().any(|o: &quota::Quota| o.period == q.per) {
            errors.push(ConfigError::new(
                file,
                q.requests.referenced.line(),
                format!(
                    "{path}: plan `{name}` already has a quota per {}",
                    q.per.as_str()
                ),
            ));
            continue;
        }
        quotas.push(quota::Quota {
            requests: q.requests.value,
            period: q.per,
            path,
        });
    }
    let mut rule = |path: String, scope: Scope, r: RateConfig| -> Option<Rule> {
        let line = r.requests.referenced.line();
        let at = format!("{}:{line}", file.display());
        let requests = NonZeroU32::new(r.requests.value);
        let burst = NonZeroU32::new(r.burst.unwrap_or(r.requests.value));
        let (Some(requests), Some(burst)) = (requests, burst) else {
            errors.push(ConfigError::new(
                file,
                line,
                format!("{path}: `requests` and `burst` must be at least 1"),
            ));
            return None;
        };
        let rate = Rate {
            requests,
            per: r.per.get(),
            burst,
        };
        // The Redis store's script decides on Redis `TIME`, which counts
        // microseconds: no rule is finer than that clock, so one node
        // enforces the same rules as many.
        let limiter = (rate.interval() >= MIN_INTERVAL)
            .then(|| RuleLimiter::new(rate))
            .flatten();
        match limiter {
            Some(limiter) => Some(Rule {
                path,
                at,
                scope,
                limiter: Arc::new(limiter),
                policy: Rule::policy_header(scope, rate),
            }),
            None => {
                errors.push(ConfigError::new(
                    file,
                    line,
                    format!(
                        "{path}: {} requests per {} is too fast to enforce: at most one request per \
                         microsecond (1000000 per 1s); use fewer `requests` or a longer `per`",
                        rate.requests, r.per
                    ),
                ));
                None
            }
        }
    };
    let plan_rate = p
        .rate
        .and_then(|r| rule(format!("plans.{name}.rate"), Scope::Plan, r));
    let mut by_api = BTreeMap::new();
    let mut unknown = Vec::new();
    for (api, a) in in_file_order(p.apis) {
        let (api_line, api) = (api.referenced.line(), api.value);
        let Some((_, ops)) = apis.iter().find(|(n, _)| *n == api) else {
            unknown.push((api_line, api));
            continue;
        };
        let api_rate = a
            .rate
            .and_then(|r| rule(format!("plans.{name}.apis.{api}.rate"), Scope::Api, r));
        let mut op_rules = BTreeMap::new();
        for (op, o) in in_file_order(a.operations) {
            let (op_line, op) = (op.referenced.line(), op.value);
            if !ops.contains(&op) {
                unknown.push((op_line, format!("{api}.operations.{op}")));
                continue;
            }
            if let Some(r) = o.rate.and_then(|r| {
                rule(
                    format!("plans.{name}.apis.{api}.operations.{op}.rate"),
                    Scope::Operation,
                    r,
                )
            }) {
                op_rules.insert(op, r);
            }
        }
        by_api.insert(api, (api_rate, op_rules));
    }
    for (line, u) in unknown {
        errors.push(ConfigError::new(
            file,
            if line == 0 { plan_line } else { line },
            format!(
                "plan `{name}`: `apis.{u}` names no API or operation of sandgate.yaml (APIs: {})",
                apis.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if errors.is_empty() {
        Ok(Plan {
            name: name.to_owned(),
            rate: plan_rate,
            quotas,
            concurrency: p.concurrency.map(|c| c.value),
            storage: p.storage.map(|b| b.bytes()),
            apis: by_api,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `examples/policies/plans.yaml`, the sample README and docs point
    /// to, loads against the demo's API and operation names.
    #[test]
    fn the_sample_plans_load_against_the_demo() {
        static FILES: &[(&str, &str)] = &[(
            "policies/plans.yaml",
            include_str!("../../examples/policies/plans.yaml"),
        )];
        let apis = [(
            "payments".to_owned(),
            vec!["createPaymentIntent".to_owned()],
        )];
        let plans = Plans::load(&Source::Embedded(FILES), &apis).expect("the sample loads");
        assert_eq!(plans.default_plan, "trial");
        let trial = plans.get("trial").expect("trial");
        assert_eq!(trial.quotas.len(), 2);
        assert_eq!(trial.concurrency, Some(16));
        let rules: Vec<&str> = trial
            .rules("payments", Some("createPaymentIntent"))
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(
            rules,
            [
                "plans.trial.apis.payments.operations.createPaymentIntent.rate",
                "plans.trial.apis.payments.rate",
                "plans.trial.rate"
            ]
        );
        assert!(plans.get("growth").is_some());
    }

    /// A rule faster than one request per microsecond is refused at load,
    /// at its line: the cluster script could not enforce it. One per
    /// microsecond is the fastest allowed.
    #[test]
    fn a_rate_faster_than_one_per_microsecond_is_a_load_error() {
        static FAST: &[(&str, &str)] = &[(
            "policies/plans.yaml",
            "plans:\n  bench:\n    rate: { requests: 10000000, per: 1s, burst: 10000000 }\ndefault_plan: bench\n",
        )];
        let errors = Plans::load(&Source::Embedded(FAST), &[]).expect_err("too fast");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(text.contains("plans.yaml:3"), "{text}");
        assert!(
            text.contains("plans.bench.rate: 10000000 requests per 1s is too fast to enforce"),
            "{text}"
        );
        static FASTEST: &[(&str, &str)] = &[(
            "policies/plans.yaml",
            "plans:\n  bench:\n    rate: { requests: 1000000, per: 1s, burst: 10000000 }\n",
        )];
        let plans = Plans::load(&Source::Embedded(FASTEST), &[]).expect("one per microsecond");
        assert!(plans.get("bench").and_then(|p| p.rate.as_ref()).is_some());
    }
}
