//! The integration-test stage: HTTP checks against a base URL (the seed's
//! `DOMAIN`), each retried until the stage's deadline, with a JUnit XML report.
//!
//! Config:
//! - `base_url` (required): e.g. `http://127.0.0.1:8080`
//! - `check.<name>=<METHOD> <PATH> <STATUS> [BODY SUBSTRING]`, repeatable:
//!   e.g. `check.books=GET /api/v1/books 200 "title"` (quotes optional)
//! - `retry_for` (default `30s`): how long checks may keep failing before the
//!   stage gives up; `interval` (default `250ms`) between attempts;
//!   `request_timeout` (default `5s`) for each request
//! - `report`: a path inside a granted directory (`--allow-dir DIR:/reports:rw`)
//!   for a JUnit XML report, e.g. `/reports/integration.xml`
//! - `suite` (default: the stage name): the JUnit suite name
//!
//! Grants: `--allow-http` for the base URL's origin; `--allow-dir` for the report.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use runner_sdk::{Context, Error, Guest, Outcome, config, http};
use std::time::{Duration, Instant};

struct IntegrationTest;

#[derive(Debug, Clone)]
struct Check {
    name: String,
    method: String,
    path: String,
    status: u16,
    body_contains: Option<String>,
}

impl Check {
    fn parse(name: &str, spec: &str) -> Result<Self, Error> {
        let invalid = |why: &str| {
            Error::InvalidConfig(format!(
                "check.{name}=\"{spec}\": {why}; expected `METHOD PATH STATUS [BODY SUBSTRING]`, e.g. `GET /health 200`"
            ))
        };
        let mut parts = spec.trim().splitn(4, ' ');
        let method = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| invalid("no method"))?;
        let path = parts.next().ok_or_else(|| invalid("no path"))?;
        if !path.starts_with('/') {
            return Err(invalid("the path must start with /"));
        }
        let status = parts
            .next()
            .ok_or_else(|| invalid("no expected status"))?
            .parse::<u16>()
            .map_err(|_| invalid("the status is not a number"))?;
        let body_contains = parts
            .next()
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty());
        Ok(Check {
            name: name.to_string(),
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            status,
            body_contains,
        })
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// One attempt: `Ok` when it passes, `Err(reason)` otherwise.
    fn attempt(&self, base_url: &str, timeout: Duration) -> Result<(), String> {
        let request = http::Request {
            method: self.method.clone(),
            url: format!("{}{}", base_url.trim_end_matches('/'), self.path),
            headers: vec![("user-agent".into(), "runner-integration-test".into())],
            body: None,
            timeout_ms: Some(timeout.as_millis().min(u32::MAX as u128) as u32),
        };
        let response = http::send(&request).map_err(|e| runner_sdk::describe(&e))?;
        if response.status != self.status {
            return Err(format!(
                "expected status {}, got {}",
                self.status, response.status
            ));
        }
        if let Some(needle) = &self.body_contains {
            let body = String::from_utf8_lossy(&response.body);
            if !body.contains(needle.as_str()) {
                let shown: String = body.chars().take(200).collect();
                return Err(format!(
                    "body does not contain \"{needle}\" (body starts: {shown:?})"
                ));
            }
        }
        Ok(())
    }
}

struct CheckResult {
    check: Check,
    attempts: u32,
    elapsed: Duration,
    failure: Option<String>,
}

fn run_check(
    check: Check,
    base_url: &str,
    deadline: Instant,
    interval: Duration,
    timeout: Duration,
) -> CheckResult {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match check.attempt(base_url, timeout) {
            Ok(()) => {
                return CheckResult {
                    check,
                    attempts,
                    elapsed: started.elapsed(),
                    failure: None,
                };
            }
            Err(reason) if Instant::now() + interval >= deadline => {
                return CheckResult {
                    check,
                    attempts,
                    elapsed: started.elapsed(),
                    failure: Some(reason),
                };
            }
            Err(reason) => {
                runner_sdk::debug(&format!(
                    "check {} attempt {attempts}: {reason}; retrying",
                    check.name
                ));
                std::thread::sleep(interval);
            }
        }
    }
}

fn junit(suite: &str, base_url: &str, results: &[CheckResult]) -> Result<String, Error> {
    let mut suite = TestSuite::new(suite);
    for r in results {
        let status = match &r.failure {
            None => TestCaseStatus::success(),
            Some(reason) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("{} {}: {reason}", r.check.describe(), base_url));
                s.set_description(format!("{} attempt(s)", r.attempts));
                s
            }
        };
        let mut case = TestCase::new(r.check.name.as_str(), status);
        case.set_classname(r.check.describe());
        case.set_time(r.elapsed);
        suite.add_test_case(case);
    }
    let mut report = Report::new("runner");
    report.add_test_suite(suite);
    report
        .to_string()
        .map_err(|e| Error::Failed(format!("cannot write the JUnit report: {e}")))
}

impl Guest for IntegrationTest {
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = config(&ctx);
        let base_url = cfg.require("base_url")?.to_string();
        let retry_for = cfg.duration("retry_for", Duration::from_secs(30))?;
        let interval = cfg.duration("interval", Duration::from_millis(250))?;
        let timeout = cfg.duration("request_timeout", Duration::from_secs(5))?;
        let checks = cfg
            .with_prefix("check")
            .into_iter()
            .map(|(name, spec)| Check::parse(name, spec))
            .collect::<Result<Vec<_>, _>>()?;
        if checks.is_empty() {
            return Err(Error::InvalidConfig(
                "no checks configured; add one or more --config check.NAME='GET /health 200'"
                    .into(),
            ));
        }

        let deadline = Instant::now() + retry_for;
        let results: Vec<CheckResult> = checks
            .into_iter()
            .map(|c| run_check(c, &base_url, deadline, interval, timeout))
            .collect();

        let report = cfg.get("report");
        if let Some(path) = report {
            let xml = junit(cfg.get_or("suite", &ctx.stage), &base_url, &results)?;
            std::fs::write(path, xml).map_err(|e| {
                Error::Failed(format!(
                    "cannot write the report to {path}: {e}; grant its directory with --allow-dir HOST:GUEST:rw"
                ))
            })?;
        }

        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| {
                r.failure.as_ref().map(|why| {
                    format!(
                        "{} ({} {}): {why} after {} attempt(s)",
                        r.check.name,
                        r.check.describe(),
                        base_url,
                        r.attempts
                    )
                })
            })
            .collect();
        for r in results.iter().filter(|r| r.failure.is_none()) {
            runner_sdk::info(&format!(
                "check {} passed ({})",
                r.check.name,
                r.check.describe()
            ));
        }
        if !failed.is_empty() {
            return Err(Error::Failed(format!(
                "{} of {} checks failed: {}",
                failed.len(),
                results.len(),
                failed.join("; ")
            )));
        }
        let outcome = runner_sdk::outcome(format!(
            "{} checks passed against {base_url}",
            results.len()
        ))
        .with_output("passed", results.len().to_string());
        // The host collects reports named so into `runner run --junit`.
        Ok(match report {
            Some(path) => outcome.with_output("junit_report", path),
            None => outcome,
        })
    }
}

runner_sdk::export!(IntegrationTest);
