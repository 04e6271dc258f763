//! A test guest whose `mode` setting picks the behaviour under test. Host
//! calls that fail return their error from the stage, so the test sees
//! exactly what the host told the guest.

use runner_sdk::{Context, Error, Guest, Outcome, config, docker, http, kv, template};

struct Probe;

fn arg<'a>(ctx: &'a Context, key: &str) -> Result<&'a str, Error> {
    config(ctx).require(key)
}

impl Guest for Probe {
    fn describe() -> runner_sdk::Description {
        runner_sdk::description("Test guest: probes the sandbox (a mode per behaviour)")
            .setting(
                runner_sdk::setting("mode", runner_sdk::SettingKind::Text, "what to do").required(),
            )
            .setting(runner_sdk::setting(
                "*",
                runner_sdk::SettingKind::Text,
                "any setting: each mode reads its own",
            ))
            .output("*", "each mode writes its own")
    }
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let cfg = config(&ctx);
        match cfg.require("mode")? {
            "noop" => Ok(runner_sdk::outcome("ok")),
            "echo" => {
                let mut out =
                    runner_sdk::outcome(format!("service={} stage={}", ctx.service, ctx.stage));
                out.outputs.extend(ctx.config.iter().cloned());
                out.outputs.extend(ctx.inputs.iter().cloned());
                Ok(out)
            }
            "hold" => {
                // Report the wall-clock interval this run occupied.
                let now = || {
                    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    since.unwrap_or_default().as_millis()
                };
                let start = now();
                std::thread::sleep(std::time::Duration::from_millis(cfg.u64("ms", 500)?));
                let held = runner_sdk::outcome("held").with_output("start", start.to_string());
                Ok(held.with_output("end", now().to_string()))
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 * 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("probe asked to panic"),
            "print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                Ok(runner_sdk::outcome("printed"))
            }
            "env" => {
                let vars = std::env::vars().count();
                let args = std::env::args().count();
                Ok(runner_sdk::outcome("env")
                    .with_output("vars", vars.to_string())
                    .with_output("args", args.to_string()))
            }
            "read-file" => {
                let path = arg(&ctx, "path")?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Failed(format!("read {path}: {e}")))?;
                Ok(runner_sdk::outcome("read").with_output("content", text))
            }
            "write-file" => {
                let path = arg(&ctx, "path")?;
                std::fs::write(path, b"written")
                    .map_err(|e| Error::Failed(format!("write {path}: {e}")))?;
                Ok(runner_sdk::outcome("written"))
            }
            "kv-get" => {
                let key = arg(&ctx, "key")?;
                let value = kv::get(key)?.map(|e| String::from_utf8_lossy(&e.value).into_owned());
                Ok(runner_sdk::outcome("got").with_output("value", value.unwrap_or_default()))
            }
            "kv-put" => {
                let index = kv::put(arg(&ctx, "key")?, arg(&ctx, "value")?.as_bytes())?;
                Ok(runner_sdk::outcome("put").with_output("index", index.to_string()))
            }
            "kv-get-loop" => {
                let key = arg(&ctx, "key")?;
                let n = cfg.u64("n", 10_000)?;
                for _ in 0..n {
                    std::hint::black_box(kv::get(key)?);
                }
                Ok(runner_sdk::outcome(format!("{n} gets")))
            }
            "cas-increment" => {
                // Increment a counter `n` times with compare-and-swap, retrying on conflict.
                let key = arg(&ctx, "key")?;
                let n = cfg.u64("n", 100)?;
                let mut conflicts = 0u64;
                for _ in 0..n {
                    loop {
                        let (current, index) = match kv::get(key)? {
                            Some(e) => (
                                String::from_utf8_lossy(&e.value)
                                    .parse::<u64>()
                                    .unwrap_or(0),
                                e.modify_index,
                            ),
                            None => (0, 0),
                        };
                        if kv::cas(key, (current + 1).to_string().as_bytes(), index)? {
                            break;
                        }
                        conflicts += 1;
                    }
                }
                Ok(runner_sdk::outcome("incremented")
                    .with_output("conflicts", conflicts.to_string()))
            }
            "cas" => {
                let index = cfg.u64("index", 0)?;
                let ok = kv::cas(arg(&ctx, "key")?, arg(&ctx, "value")?.as_bytes(), index)?;
                Ok(runner_sdk::outcome("cas").with_output("swapped", ok.to_string()))
            }
            "http-get" => {
                let response = http::send(&http::Request {
                    method: "GET".into(),
                    url: arg(&ctx, "url")?.into(),
                    headers: vec![],
                    body: None,
                    timeout_ms: None,
                })?;
                Ok(runner_sdk::outcome("fetched")
                    .with_output("status", response.status.to_string())
                    .with_output("body", String::from_utf8_lossy(&response.body)))
            }
            "template" => {
                // `file` names a template file; otherwise `text` is the template.
                let source = match cfg.get("file") {
                    Some(file) => template::Source::File(file.into()),
                    None => template::Source::Inline(arg(&ctx, "text")?.into()),
                };
                let rendered = template::render(&source, arg(&ctx, "dest")?)?;
                Ok(runner_sdk::outcome("rendered")
                    .with_output("changed", rendered.changed.to_string()))
            }
            "docker-build" => {
                let id = docker::build(arg(&ctx, "context")?, None, arg(&ctx, "tag")?, &[])?;
                Ok(runner_sdk::outcome("built").with_output("id", id))
            }
            "docker-tag" => {
                docker::tag(arg(&ctx, "source")?, arg(&ctx, "target")?)?;
                Ok(runner_sdk::outcome("tagged"))
            }
            "docker-pull" => {
                docker::pull(arg(&ctx, "image")?)?;
                Ok(runner_sdk::outcome("pulled"))
            }
            "docker-push" => {
                docker::push(arg(&ctx, "image")?)?;
                Ok(runner_sdk::outcome("pushed"))
            }
            other => Err(Error::InvalidConfig(format!("unknown mode {other}"))),
        }
    }
}

runner_sdk::export!(Probe);
