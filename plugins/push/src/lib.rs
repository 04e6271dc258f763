//! The `push` stage: push an image to its registry.
//!
//! Settings:
//! - `image`: the reference to push, e.g. `127.0.0.1:5000/books-ms:v2`
//!   (usually `${build.image}`).
//! - `also_tag`: more tags of the same repository to push, comma separated
//!   (e.g. `latest`).
//!
//! Outputs: `image`, and `pushed` (every reference pushed, comma separated).

use runner_sdk::{Context, Error, Guest, Outcome, docker};

struct Push;

/// `registry:5000/app:v1` → `registry:5000/app` (a port is not a tag).
fn repository(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

impl Guest for Push {
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Push an image (and extra tags) to its registry")
            .setting(
                runner_sdk::setting(
                    "image",
                    runner_sdk::SettingKind::Text,
                    "the image to push, repository:tag",
                )
                .required(),
            )
            .setting(runner_sdk::setting(
                "also_tag",
                runner_sdk::SettingKind::Text,
                "more tags to push the same image as, comma-separated",
            ))
            .output("image", "the pushed image")
            .output("pushed", "every reference pushed, comma-separated")
    }
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = runner_sdk::config(&ctx);
        let image = cfg.require("image")?;
        let mut references = vec![image.to_string()];
        for extra in cfg
            .get("also_tag")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let target = format!("{}:{extra}", repository(image));
            docker::tag(image, &target)?;
            references.push(target);
        }
        let total = references.len() as u64;
        for (i, reference) in references.iter().enumerate() {
            runner_sdk::log::progress(&format!("pushing {reference}"), i as u64, total);
            docker::push(reference)?;
        }
        Ok(
            runner_sdk::outcome(format!("pushed {}", references.join(", ")))
                .with_output("image", image)
                .with_output("pushed", references.join(",")),
        )
    }
}

runner_sdk::export!(Push);

#[cfg(test)]
mod tests {
    #[test]
    fn repository_keeps_a_registry_port() {
        assert_eq!(
            super::repository("127.0.0.1:5000/app:v1"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(
            super::repository("127.0.0.1:5000/app"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(super::repository("app:v1"), "app");
    }
}
