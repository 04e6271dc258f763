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
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Build an image from a granted context directory")
            .setting(
                runner_sdk::setting(
                    "context",
                    runner_sdk::SettingKind::Text,
                    "the build context: a granted directory",
                )
                .required(),
            )
            .setting(
                runner_sdk::setting(
                    "image",
                    runner_sdk::SettingKind::Text,
                    "the image's repository, e.g. 127.0.0.1:5000/books-ms",
                )
                .required(),
            )
            .setting(runner_sdk::setting(
                "tag",
                runner_sdk::SettingKind::Text,
                "the tag [default: version, else latest]",
            ))
            .setting(runner_sdk::setting(
                "version",
                runner_sdk::SettingKind::Text,
                "the tag, when tag is not set",
            ))
            .setting(
                runner_sdk::setting(
                    "dockerfile",
                    runner_sdk::SettingKind::Text,
                    "the Dockerfile, relative to the context",
                )
                .default("Dockerfile"),
            )
            .setting(runner_sdk::setting(
                "build_arg.*",
                runner_sdk::SettingKind::Text,
                "a build argument (build_arg.NAME)",
            ))
            .output("image", "the built image, repository:tag")
            .output("tag", "its tag")
            .output("id", "its image ID")
    }
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
