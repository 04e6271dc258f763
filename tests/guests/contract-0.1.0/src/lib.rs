//! A stage built against the frozen 0.1.0 contract in `wit/` (never
//! updated): runner's compatible contract versions must keep running it
//! (wit/VERSIONING.md). It logs through `log` and returns an output.

#[allow(clippy::too_many_arguments)] // generated code
mod bindings {
    wit_bindgen::generate!({
        world: "stage",
        path: "wit",
    });
}

use bindings::runner::plugin::log;
use bindings::{Context, Error, Guest, Outcome};

struct OldStage;

impl Guest for OldStage {
    fn run(ctx: Context) -> Result<Outcome, Error> {
        log::write(log::Level::Info, "built against runner:plugin@0.1.0");
        Ok(Outcome {
            outputs: vec![("contract".into(), "0.1.0".into())],
            message: format!("old contract ran for {}", ctx.service),
        })
    }
}

bindings::export!(OldStage with_types_in bindings);
