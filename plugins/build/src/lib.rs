//! The `build` stage: `docker build` of a granted context directory.
//!
//! Settings:
//! - `context`: the build context, a path inside the stage's `dirs` grant.
//! - `image`: the repository, e.g. `127.0.0.1:5000/books-ms`.
//! - `tag`: the tag; without it, `version` or an earlier stage's `*.version`
//!   output is used.
//! - `dockerfile`: relative to the context (default `Dockerfile`).
//! - `build_arg.NAME`: build arguments.
//!
//! Outputs: `image` (the full reference built), `id`, `tag`.

use runner_sdk::{Context, Error, Guest, Outcome, docker};

struct Build;

fn tag(ctx: &Context) -> Result<String, Error> {
    let cfg = runner_sdk::config(ctx);
    if let Some(tag) = cfg.get("tag").or(cfg.get("version")) {
        return Ok(tag.to_string());
    }
    ctx.inputs
        .iter()
        .rev()
        .find(|(k, _)| k.ends_with(".version"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            Error::InvalidConfig(
                "no tag: set `tag` (or `version`), or run after a stage that outputs `version`"
                    .into(),
            )
        })
}

impl Guest for Build {
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = runner_sdk::config(&ctx);
        let context = cfg.require("context")?;
        let image = cfg.require("image")?;
        let tag = tag(&ctx)?;
        if tag.contains(['/', ':', ' ']) {
            return Err(Error::InvalidConfig(format!(
                "tag \"{tag}\" must not contain '/', ':' or spaces"
            )));
        }
        let reference = format!("{image}:{tag}");
        let args: Vec<(String, String)> = cfg
            .with_prefix("build_arg")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        runner_sdk::info(&format!("building {reference} from {context}"));
        log_progress(&reference);
        let id = docker::build(context, cfg.get("dockerfile"), &reference, &args)?;
        Ok(runner_sdk::outcome(format!("built {reference}"))
            .with_output("image", reference)
            .with_output("id", id)
            .with_output("tag", tag))
    }
}

fn log_progress(reference: &str) {
    runner_sdk::log::progress(&format!("docker build {reference}"), 0, 0);
}

runner_sdk::export!(Build);
