//! `--json`: every event as one line on stdout.

use runner::pipeline::report::{Event, Reporter};
use std::io::Write;
use std::sync::Mutex;

pub struct JsonReporter {
    out: Mutex<std::io::Stdout>,
}

impl Default for JsonReporter {
    fn default() -> Self {
        Self {
            out: Mutex::new(std::io::stdout()),
        }
    }
}

impl Reporter for JsonReporter {
    fn event(&self, event: &Event) {
        let mut value = match serde_json::to_value(event) {
            Ok(v) => v,
            Err(_) => return,
        };
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "time".into(),
                humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string()
                    .into(),
            );
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }
}
