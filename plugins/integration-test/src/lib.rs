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
//! - `retry` (default `any`): which failures are tried again until
//!   `retry_for`. `any` retries every failure, for a service that is still
//!   starting (tests of a new release before it takes traffic). `connection`
//!   retries only requests that got no response (connection refused or
//!   reset, timeout): a response whose status or body the check rejects
//!   fails the stage at once, and the checks after it are tried once each,
//!   for the report. Use it where the service already serves users (tests
//!   through the proxy after a switch), so a bad release is caught after one
//!   wrong answer instead of serving errors for all of `retry_for`.
//! - `report`: a path inside a granted directory (`--allow-dir DIR:/reports:rw`)
//!   for a JUnit XML report, e.g. `/reports/integration.xml`
//! - `suite` (default: the stage name): the JUnit suite name
//!
//! Grants: `--allow-http` for the base URL's origin; `--allow-dir` for the report.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use runner_sdk::{Context, Error, Guest, Outcome, config, http};
use std::time::{Duration, Instant};

struct IntegrationTest;

/// Which failed attempts are tried again (`retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every failure.
    Any,
    /// Only a request that got no response.
    Connection,
}

impl Retry {
    fn parse(value: &str) -> Result<Self, Error> {
        match value.trim() {
            "any" => Ok(Retry::Any),
            "connection" => Ok(Retry::Connection),
            other => Err(Error::InvalidConfig(format!(
                "retry=\"{other}\": expected `any` (retry every failure) or `connection` \
                 (retry only requests that got no response)"
            ))),
        }
    }

    fn retries(self, failure: &Failure) -> bool {
        match self {
            Retry::Any => true,
            Retry::Connection => matches!(failure, Failure::NoResponse(_)),
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone)]
enum Failure {
    /// The request got no response: refused, reset, timed out, cut short.
    NoResponse(String),
    /// The service answered and the check rejects the answer (status, body),
    /// or the host refused to send the request (not granted, invalid):
    /// trying again soon changes nothing.
    Rejected(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::NoResponse(reason) | Failure::Rejected(reason) => reason,
        }
    }
}

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

    /// One attempt: `Ok` when it passes, why not otherwise.
    fn attempt(&self, base_url: &str, timeout: Duration) -> Result<(), Failure> {
        let request = http::Request {
            method: self.method.clone(),
            url: format!("{}{}", base_url.trim_end_matches('/'), self.path),
            headers: vec![("user-agent".into(), "runner-integration-test".into())],
            body: None,
            timeout_ms: Some(timeout.as_millis().min(u32::MAX as u128) as u32),
        };
        let response = http::send(&request).map_err(|e| {
            let reason = runner_sdk::describe(&e);
            match e {
                // The host's transport errors: refused (`unavailable`), no
                // answer in time, reset or cut short (`failed`).
                Error::Unavailable(_) | Error::Timeout(_) | Error::Failed(_) => {
                    Failure::NoResponse(reason)
                }
                Error::Denied(_)
                | Error::InvalidConfig(_)
                | Error::NotFound(_)
                | Error::Conflict(_) => Failure::Rejected(reason),
            }
        })?;
        if response.status != self.status {
            return Err(Failure::Rejected(format!(
                "expected status {}, got {}",
                self.status, response.status
            )));
        }
        if let Some(needle) = &self.body_contains {
            let body = String::from_utf8_lossy(&response.body);
            if !body.contains(needle.as_str()) {
                let shown: String = body.chars().take(200).collect();
                return Err(Failure::Rejected(format!(
                    "body does not contain \"{needle}\" (body starts: {shown:?})"
                )));
            }
        }
        Ok(())
    }
}

struct CheckResult {
    check: Check,
    attempts: u32,
    elapsed: Duration,
    failure: Option<Failure>,
}

/// How checks are retried: until `deadline`, `interval` apart, those `retry` allows.
#[derive(Debug, Clone, Copy)]
struct Retrying {
    retry: Retry,
    deadline: Instant,
    interval: Duration,
}

fn run_check(check: Check, base_url: &str, retrying: Retrying, timeout: Duration) -> CheckResult {
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
            Err(failure)
                if !retrying.retry.retries(&failure)
                    || Instant::now() + retrying.interval >= retrying.deadline =>
            {
                return CheckResult {
                    check,
                    attempts,
                    elapsed: started.elapsed(),
                    failure: Some(failure),
                };
            }
            Err(failure) => {
                runner_sdk::debug(&format!(
                    "check {} attempt {attempts}: {}; retrying",
                    check.name,
                    failure.reason()
                ));
                std::thread::sleep(retrying.interval);
            }
        }
    }
}

fn junit(suite: &str, base_url: &str, results: &[CheckResult]) -> Result<String, Error> {
    let mut suite = TestSuite::new(suite);
    for r in results {
        let status = match &r.failure {
            None => TestCaseStatus::success(),
            Some(failure) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!(
                    "{} {}: {}",
                    r.check.describe(),
                    base_url,
                    failure.reason()
                ));
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
    fn describe() -> runner_sdk::Description {
        runner_sdk::description(
            "HTTP checks against a service, retried until they pass, with a JUnit report",
        )
        .setting(
            runner_sdk::setting(
                "base_url",
                runner_sdk::SettingKind::Url,
                "where the service answers, e.g. http://127.0.0.1:8080",
            )
            .required(),
        )
        .setting(runner_sdk::setting(
            "check.*",
            runner_sdk::SettingKind::Text,
            "a check: `METHOD /path STATUS` (check.health = \"GET /health 200\")",
        ))
        .setting(
            runner_sdk::setting(
                "retry_for",
                runner_sdk::SettingKind::Duration,
                "how long to retry a failing check",
            )
            .default("30s"),
        )
        .setting(
            runner_sdk::setting(
                "interval",
                runner_sdk::SettingKind::Duration,
                "the wait between tries",
            )
            .default("250ms"),
        )
        .setting(
            runner_sdk::setting(
                "retry",
                runner_sdk::SettingKind::Text,
                "what is retried: any failure, or only connection errors (any|connection)",
            )
            .default("any"),
        )
        .setting(
            runner_sdk::setting(
                "request_timeout",
                runner_sdk::SettingKind::Duration,
                "time limit of one request",
            )
            .default("5s"),
        )
        .setting(runner_sdk::setting(
            "report",
            runner_sdk::SettingKind::Text,
            "write a JUnit report to this path (in a granted directory)",
        ))
        .setting(runner_sdk::setting(
            "suite",
            runner_sdk::SettingKind::Text,
            "the JUnit suite name [default: the stage's name]",
        ))
        .output("passed", "how many checks passed")
        .output("junit_report", "the report's path, when one was written")
    }
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = config(&ctx);
        let base_url = cfg.require("base_url")?.to_string();
        let retry_for = cfg.duration("retry_for", Duration::from_secs(30))?;
        let interval = cfg.duration("interval", Duration::from_millis(250))?;
        let retry = Retry::parse(cfg.get_or("retry", "any"))?;
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

        let mut retrying = Retrying {
            retry,
            deadline: Instant::now() + retry_for,
            interval,
        };
        let mut results: Vec<CheckResult> = Vec::with_capacity(checks.len());
        for check in checks {
            let result = run_check(check, &base_url, retrying, timeout);
            if retry == Retry::Connection && matches!(result.failure, Some(Failure::Rejected(_))) {
                // The stage has failed: the checks left get one attempt each.
                retrying.deadline = Instant::now();
            }
            results.push(result);
        }

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
                r.failure.as_ref().map(|failure| {
                    let not_retried = match failure {
                        Failure::Rejected(_) if retry == Retry::Connection => {
                            " (not retried: retry=connection)"
                        }
                        _ => "",
                    };
                    format!(
                        "{} ({} {}): {} after {} attempt(s){not_retried}",
                        r.check.name,
                        r.check.describe(),
                        base_url,
                        failure.reason(),
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
