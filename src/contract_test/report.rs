//! What a contract test shows: a progress bar on a terminal (failures and
//! skips printed above it), plain lines otherwise (one per case, so a CI
//! log reads top to bottom), a summary, and the JUnit XML report.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::exchange::{Outcome, Verdict};
use super::plan::Case;

/// Shows progress while the cases run.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress bar over `total` cases when `bar` is set (a terminal),
    /// else plain lines on standard output.
    pub fn new(total: usize, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {elapsed} {wide_msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress { bar }
    }

    /// Records one finished case.
    pub fn done(&self, case: &Case, outcome: &Outcome) {
        let text = case_lines(case, outcome);
        match &self.bar {
            Some(b) => {
                if !matches!(outcome.verdict, Verdict::Passed) {
                    b.println(text.trim_end());
                }
                b.set_message(case.name.clone());
                b.inc(1);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `PASS name (exchange, time)`, or `FAIL` with one indented line per
/// problem, or `SKIP name: why`.
fn case_lines(case: &Case, outcome: &Outcome) -> String {
    let exchange = outcome
        .exchange
        .as_deref()
        .map(|e| format!(" ({e}, {} ms)", outcome.elapsed.as_millis()))
        .unwrap_or_default();
    match &outcome.verdict {
        Verdict::Passed => format!("PASS {}{exchange}\n", case.name),
        Verdict::Skipped(why) => format!("SKIP {}: {why}\n", case.name),
        Verdict::Failed(problems) => {
            let mut s = format!("FAIL {}{exchange}\n", case.name);
            for p in problems {
                s.push_str(&format!("     {}: {}\n", p.at, p.message));
            }
            s
        }
    }
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Cases whose every check passed.
    pub passed: usize,
    /// Cases with at least one problem.
    pub failed: usize,
    /// Cases not run.
    pub skipped: usize,
}

impl Counts {
    /// The counts of `outcomes`.
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Counts {
        let mut c = Counts::default();
        for o in outcomes {
            match o.verdict {
                Verdict::Passed => c.passed += 1,
                Verdict::Failed(_) => c.failed += 1,
                Verdict::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }
}

/// Prints the summary: counts, then the failed cases, then every skipped
/// case with its reason.
pub fn summary(api: &str, target: &str, results: &[(Case, Outcome)], took: Duration) {
    let c = Counts::of(results.iter().map(|(_, o)| o));
    let mut s = format!(
        "\ncontract-test: API `{api}` against {target}: {} passed, {} failed, {} skipped ({} case(s), {:.1} s)\n",
        c.passed,
        c.failed,
        c.skipped,
        results.len(),
        took.as_secs_f64()
    );
    if c.failed > 0 {
        s.push_str("failed:\n");
        for (case, o) in results {
            if let Verdict::Failed(problems) = &o.verdict {
                let first = problems
                    .first()
                    .map(|p| format!("{}: {}", p.at, p.message))
                    .unwrap_or_default();
                s.push_str(&format!("  {}: {first}\n", case.name));
            }
        }
    }
    if c.skipped > 0 {
        s.push_str("skipped:\n");
        for (case, o) in results {
            if let Verdict::Skipped(why) = &o.verdict {
                s.push_str(&format!("  {}: {why}\n", case.name));
            }
        }
    }
    let sent: Vec<&Outcome> = results
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o.exchange.is_some())
        .collect();
    if !sent.is_empty()
        && sent
            .iter()
            .all(|o| o.exchange.as_deref().is_some_and(|e| e.contains("→ 404")))
    {
        s.push_str("hint: every answer was 404; --target is the URL the contract's paths are appended to (for a sandgate gateway: its address plus the API's prefix, e.g. http://127.0.0.1:8080/payments)\n");
    }
    if c.passed + c.failed == 0 {
        s.push_str("no case ran: every case was skipped, so nothing was checked\n");
    }
    print!("{s}");
}

/// The JUnit XML report: one test suite for the API, one test case per
/// case (class name: the operation id), failures with every problem.
pub fn junit(api: &str, target: &str, results: &[(Case, Outcome)], took: Duration) -> Report {
    let mut suite = TestSuite::new(format!("contract-test {api}"));
    suite.set_time(took);
    suite.add_property(("target", target));
    for (case, o) in results {
        let status = match &o.verdict {
            Verdict::Passed => TestCaseStatus::success(),
            Verdict::Skipped(why) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(why.as_str());
                s
            }
            Verdict::Failed(problems) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let first = problems
                    .first()
                    .map(|p| format!("{}: {}", p.at, p.message))
                    .unwrap_or_default();
                s.set_message(first);
                s.set_type("contract");
                let mut text = String::new();
                if let Some(e) = &o.exchange {
                    text.push_str(e);
                    text.push('\n');
                }
                for p in problems {
                    text.push_str(&format!("{}: {}\n", p.at, p.message));
                }
                s.set_description(text);
                s
            }
        };
        let mut tc = TestCase::new(case.name.as_str(), status);
        tc.set_classname(format!("{api}.{}", case.operation));
        tc.set_time(o.elapsed);
        if let (Some(e), Verdict::Passed) = (&o.exchange, &o.verdict) {
            tc.set_system_out(e.as_str());
        }
        suite.add_test_case(tc);
    }
    let mut report = Report::new("sandgate contract-test");
    report.set_time(took);
    report.add_test_suite(suite);
    report
}

/// Writes `report` to `path` (through a temporary file beside it, so a
/// reader never sees half a report).
pub fn write_junit(report: &Report, path: &Path) -> Result<(), String> {
    let xml = report.to_string().map_err(|e| e.to_string())?;
    let tmp = path.with_extension("xml.partial");
    std::fs::write(&tmp, xml).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}
