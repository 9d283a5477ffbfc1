//! `sandgate contract-test`: replays an API's documented request examples
//! and fixtures against a target (a real sandbox backend, or a gateway)
//! and checks every answer against the contract, for an API team's or a
//! partner's CI.
//!
//! The sandbox directory is loaded as `sandgate check` loads it; the API
//! is picked by name. Cases are planned first ([`plan`]: one per request
//! example, or a request built from the contract, and one per fixture),
//! then sent to `--target`, the URL the contract's paths are appended to
//! ([`exchange`]), a few at a time with `--concurrency`. Each answer must
//! have a status the operation documents (a fixture case: exactly the
//! fixture's status; a 401/403 fails an example case, as it exercised
//! nothing), a documented `Content-Type`, and a body valid against the
//! documented response schema: the same checks as the gateway's live drift
//! checker ([`crate::drift::Checker`]). Output and the JUnit report are
//! in [`report`]. Credentials given on the command line are sent to the
//! target and never printed or written to the report.

mod exchange;
mod plan;
mod report;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};

pub use exchange::{MAX_BODY, Outcome, Verdict};
pub use plan::{Case, Planned, Planner};
pub use report::Counts;

use crate::config::{ConfigErrors, Source};
use crate::contract::Contract;
use crate::facade::fixtures::Fixtures;
use crate::sandbox::{Overrides, Sandbox};

/// What to test, against what, and how to report it.
pub struct Options {
    /// The sandbox (a directory, or the bundled demo).
    pub source: Source,
    /// The API's name in `sandgate.yaml`.
    pub api: String,
    /// The URL the contract's paths are appended to, e.g.
    /// `http://127.0.0.1:8080/payments` for a sandgate gateway.
    pub target: String,
    /// Extra request headers, `Name: value` (credentials; never printed).
    pub headers: Vec<String>,
    /// An API key sent as `Authorization: Bearer KEY`, or in
    /// `api_key_header` (never printed).
    pub api_key: Option<String>,
    /// The header that carries `api_key` as is, instead of `Authorization`.
    pub api_key_header: Option<String>,
    /// Where to write the JUnit XML report.
    pub junit: Option<PathBuf>,
    /// Longest wait for one complete answer.
    pub timeout: Duration,
    /// Only these operations (by `operationId`); empty: all.
    pub only: Vec<String>,
    /// Cases in flight at once.
    pub concurrency: NonZeroUsize,
    /// Extra CA certificates (PEM) to trust for an HTTPS target.
    pub ca: Option<PathBuf>,
    /// Show a progress bar (on a terminal) instead of one line per case.
    pub progress_bar: bool,
}

/// Why a contract test could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The sandbox does not load.
    #[error("{0}")]
    Config(ConfigErrors),
    /// `--api` names no API.
    #[error("unknown API `{name}`; this sandbox has: {}", known.join(", "))]
    UnknownApi {
        /// The name given.
        name: String,
        /// The sandbox's API names.
        known: Vec<String>,
    },
    /// The API has no contract to replay.
    #[error("API `{0}` has no contract; contract-test replays a contract's operations")]
    NoContract(String),
    /// `--only` names no operation.
    #[error("--only `{id}` is not an operationId of API `{api}`; it has: {known}")]
    UnknownOperation {
        /// The id given.
        id: String,
        /// The API.
        api: String,
        /// Its operation ids (the first ones).
        known: String,
    },
    /// `--target` is not usable.
    #[error("--target `{url}`: {why}")]
    Target {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A `--header` is not `Name: value` (the value is never shown).
    #[error("--header {0}")]
    Header(String),
    /// `--ca` cannot be used.
    #[error("--ca `{path}`: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The JUnit report cannot be written.
    #[error("cannot write the JUnit report `{path}`: {why}")]
    Junit {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// The result of a run.
#[derive(Debug)]
pub struct Summary {
    /// How many cases passed, failed and were skipped.
    pub counts: Counts,
}

impl Summary {
    /// The process exit status: 0 when every case that ran passed and at
    /// least one ran, else 1.
    pub fn exit_status(&self) -> u8 {
        let c = self.counts;
        if c.failed > 0 || c.passed == 0 { 1 } else { 0 }
    }
}

/// The cases for `contract` and its `fixtures`, restricted to the
/// operations in `only` (empty: all): each operation's cases followed by
/// its fixtures' cases, in document order; fixtures the contract has no
/// operation for come last.
pub fn plan(contract: &Contract, fixtures: Option<&Fixtures>, only: &[String]) -> Vec<Case> {
    let planner = Planner::new(contract);
    let fixture_cases: Vec<Case> = fixtures
        .map(|f| {
            f.specs()
                .iter()
                .map(|spec| planner.fixture_case(spec))
                .collect()
        })
        .unwrap_or_default();
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o == id);
    let mut cases = Vec::new();
    let mut fixture_cases: Vec<Option<Case>> = fixture_cases.into_iter().map(Some).collect();
    for (i, op) in contract.operations.iter().enumerate() {
        if !wanted(&op.id) {
            continue;
        }
        cases.extend(planner.operation_cases(i));
        for slot in fixture_cases.iter_mut() {
            if slot.as_ref().is_some_and(|c| c.op == Some(i)) {
                cases.extend(slot.take());
            }
        }
    }
    if only.is_empty() {
        cases.extend(fixture_cases.into_iter().flatten());
    }
    cases
}

/// Parses `Name: value` (the value is kept out of every error message).
fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| "must be `Name: value`".to_owned())?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("`{name}`: the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The credentials to send with every request.
fn credentials(opts: &Options) -> Result<Vec<(HeaderName, HeaderValue)>, SetupError> {
    let mut out = Vec::new();
    for h in &opts.headers {
        out.push(parse_header(h).map_err(SetupError::Header)?);
    }
    if let Some(key) = &opts.api_key {
        let (name, value) = match &opts.api_key_header {
            Some(h) => (h.clone(), key.clone()),
            None => ("authorization".to_owned(), format!("Bearer {key}")),
        };
        out.push(
            parse_header(&format!("{name}: {value}"))
                .map_err(|m| SetupError::Header(format!("(from --api-key) {m}")))?,
        );
    }
    Ok(out)
}

/// Runs the contract test of `opts.api` against `opts.target`, printing
/// progress and a summary, and writing the JUnit report if asked.
pub async fn run(opts: Options) -> Result<Summary, SetupError> {
    let check_only = Overrides {
        check_only: true,
        ..Overrides::default()
    };
    let sandbox = Sandbox::load(&opts.source, &check_only).map_err(SetupError::Config)?;
    let Some(api) = sandbox.apis.iter().find(|a| *a.name == *opts.api) else {
        return Err(SetupError::UnknownApi {
            name: opts.api.clone(),
            known: sandbox.api_list.iter().map(|(n, _)| n.clone()).collect(),
        });
    };
    let Some(contract) = api.contract.as_ref() else {
        return Err(SetupError::NoContract(opts.api.clone()));
    };
    for id in &opts.only {
        if !contract.operations.iter().any(|o| o.id == *id) {
            let mut known: Vec<&str> = contract.operations.iter().map(|o| o.id.as_str()).collect();
            let more = known.len().saturating_sub(20);
            known.truncate(20);
            return Err(SetupError::UnknownOperation {
                id: id.clone(),
                api: opts.api.clone(),
                known: format!(
                    "{}{}",
                    known.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }
    let roots = match &opts.ca {
        Some(path) => {
            let ca_error = |why: String| SetupError::Ca {
                path: path.clone(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            exchange::roots(Some(&pem)).map_err(ca_error)?
        }
        None => exchange::roots(None).map_err(|why| SetupError::Target {
            url: opts.target.clone(),
            why,
        })?,
    };
    let target = exchange::Target::new(&opts.target, credentials(&opts)?, opts.timeout, roots)
        .map_err(|why| SetupError::Target {
            url: opts.target.clone(),
            why,
        })?;
    let Some(checker) = crate::drift::Checker::new(contract, 1.0, MAX_BODY) else {
        return Err(SetupError::NoContract(opts.api.clone()));
    };

    let cases = plan(contract, api.fixtures.as_ref(), &opts.only);
    println!(
        "contract-test: API `{}` ({}), {} case(s) against {}",
        api.name,
        contract.title,
        cases.len(),
        target.base()
    );
    let started = Instant::now();
    let progress = report::Progress::new(cases.len(), opts.progress_bar);
    let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(cases.len());
    {
        let target = &target;
        let checker = &checker;
        let mut running = futures_util::stream::iter(cases.iter().enumerate())
            .map(|(i, case)| async move { (i, target.run(case, contract, checker).await) })
            .buffer_unordered(opts.concurrency.get());
        while let Some((i, outcome)) = running.next().await {
            progress.done(&cases[i], &outcome);
            outcomes.push((i, outcome));
        }
    }
    progress.finish();
    outcomes.sort_by_key(|(i, _)| *i);
    let took = started.elapsed();
    let results: Vec<(Case, Outcome)> = cases
        .into_iter()
        .zip(outcomes.into_iter().map(|(_, o)| o))
        .collect();
    report::summary(&api.name, target.base(), &results, took);
    if let Some(path) = &opts.junit {
        let xml = report::junit(&api.name, target.base(), &results, took);
        report::write_junit(&xml, path).map_err(|why| SetupError::Junit {
            path: path.clone(),
            why,
        })?;
        println!("JUnit report: {}", path.display());
    }
    Ok(Summary {
        counts: Counts::of(results.iter().map(|(_, o)| o)),
    })
}
