//! A stage whose `describe` returns 100 000 outputs: runner must refuse the
//! description by its count (and say so), not copy it into its own tables.

use runner_sdk::{Context, Description, Error, Guest, Outcome, OutputSpec};

struct HostileDescribe;

impl Guest for HostileDescribe {
    fn describe() -> Description {
        let mut description = runner_sdk::description("hostile description");
        description.outputs = (0..100_000)
            .map(|i| OutputSpec {
                name: format!("o{i}"),
                doc: String::new(),
            })
            .collect();
        description
    }

    fn run(_ctx: Context) -> Result<Outcome, Error> {
        Ok(runner_sdk::outcome("ran"))
    }
}

runner_sdk::export!(HostileDescribe);
