//! The `container-test` stage: run a test image (or a command in an image)
//! to completion, as the seeds' `docker-compose run --rm tests` does. The
//! stage fails with the container's exit status and its last log lines.
//!
//! Settings:
//! - `image`: the image to run (usually `${build-tests.image}`).
//! - `command`: replaces the image's command (split on spaces).
//! - `name`: the container's name (default `<service>-<stage>`); it must be
//!   granted, and it is removed afterwards.
//! - `timeout`: how long the tests may run (default `10m`).
//! - `env.NAME`: environment variables.
//! - `log_lines`: how many last log lines a failure shows (default 20).
//!
//! Outputs: `exit_code`, `duration_ms`.

use runner_sdk::{Context, Error, Guest, Outcome, docker};
use std::time::{Duration, Instant};

struct ContainerTest;

impl Guest for ContainerTest {
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Run a test container to completion; fail on a non-zero exit")
            .setting(
                runner_sdk::setting("image", runner_sdk::SettingKind::Text, "the tests image")
                    .required(),
            )
            .setting(runner_sdk::setting(
                "name",
                runner_sdk::SettingKind::Text,
                "the container's name [default: SERVICE-STAGE]",
            ))
            .setting(
                runner_sdk::setting(
                    "timeout",
                    runner_sdk::SettingKind::Duration,
                    "how long the tests may run",
                )
                .default("10m"),
            )
            .setting(
                runner_sdk::setting(
                    "log_lines",
                    runner_sdk::SettingKind::Integer,
                    "log lines of a failed run shown in the error",
                )
                .default("20"),
            )
            .setting(runner_sdk::setting(
                "command",
                runner_sdk::SettingKind::Text,
                "the command to run instead of the image's (split on spaces)",
            ))
            .setting(runner_sdk::setting(
                "env.*",
                runner_sdk::SettingKind::Text,
                "an environment variable of the container (env.NAME)",
            ))
            .output("exit_code", "the container's exit code")
            .output("duration_ms", "how long it ran")
    }
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = runner_sdk::config(&ctx);
        let image = cfg.require("image")?;
        let name = cfg
            .get("name")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}-{}", ctx.service, ctx.stage));
        let timeout = cfg.duration("timeout", Duration::from_secs(600))?;
        let lines = cfg.u64("log_lines", 20)?;
        let command = cfg
            .get("command")
            .map(|c| c.split_whitespace().map(str::to_string).collect());
        let env = cfg
            .with_prefix("env")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();

        // A container left by an interrupted run is replaced.
        match docker::remove(&name, true) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let started = Instant::now();
        runner_sdk::log::progress(&format!("running {image}"), 0, 0);
        docker::run(&docker::RunSpec {
            name: name.clone(),
            image: image.to_string(),
            env,
            labels: vec![("container-test.stage".into(), ctx.stage.clone())],
            command,
            ports: vec![],
            restart: docker::RestartPolicy::No,
            service: None,
            tags: vec![],
        })?;
        let secs = u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX);
        let waited = docker::wait(&name, secs);
        let logs = docker::logs(&name, lines as u32).unwrap_or_default();
        if let Err(e) = docker::remove(&name, true) {
            runner_sdk::warn(&format!(
                "could not remove {name}: {}",
                runner_sdk::describe(&e)
            ));
        }
        let code = waited.map_err(|e| match e {
            Error::Timeout(m) => Error::Timeout(format!(
                "{m}; the tests did not finish (raise `timeout`). Last log lines:\n{logs}"
            )),
            other => other,
        })?;
        let elapsed = started.elapsed();
        if code != 0 {
            return Err(Error::Failed(format!(
                "{image} exited with status {code} after {elapsed:.1?}. Last log lines of {name}:\n{}",
                logs.trim_end()
            )));
        }
        Ok(
            runner_sdk::outcome(format!("{image} passed in {elapsed:.1?}"))
                .with_output("exit_code", code.to_string())
                .with_output("duration_ms", elapsed.as_millis().to_string()),
        )
    }
}

runner_sdk::export!(ContainerTest);
