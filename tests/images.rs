//! Image operations through the `docker` capability on the real engine:
//! build from a granted directory, tag, push to and pull from a real local registry
//! (Debian's docker-registry on 127.0.0.1), each refused without its grant.

mod common;

use common::{Env, run};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A docker-registry on a free 127.0.0.1 port, stopped on drop.
struct Registry {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = Self {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the test's images (by reference) whatever happens.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .arg("rmi")
            .arg("-f")
            .args(&self.0)
            .output();
    }
}

#[test]
fn build_tag_and_push_need_their_grants_and_work() {
    let registry = Registry::start();
    let env = Env::new();
    let name = format!("runner-test-images-{}", std::process::id());
    let local = format!("{name}:v1");
    let remote = format!("127.0.0.1:{}/{name}:v1", registry.port);
    let _images = Images(vec![local.clone(), remote.clone()]);

    let context = env.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "hello").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    let ctx = format!("context={}", context.display());
    let images = format!("{name}:*");
    let remote_images = format!("127.0.0.1:*/{name}:*");

    // Build: refused without --allow-build, and outside the granted directories.
    run(env.probe("docker-build").args([
        "--allow-image",
        &images,
        "-c",
        &ctx,
        "-c",
        &format!("tag={local}"),
    ]))
    .expect_code(1)
    .stderr_has("grant it with --allow-build");
    run(env.probe("docker-build").args([
        "--allow-build",
        "--allow-image",
        &images,
        "-c",
        &ctx,
        "-c",
        &format!("tag={local}"),
    ]))
    .expect_code(1)
    .stderr_has("is outside the granted directories");
    let built = run(env
        .probe("docker-build")
        .args(["--allow-build", "--allow-image", &images, "--allow-dir"])
        .arg(&context)
        .args(["-c", &ctx, "-c", &format!("tag={local}")]))
    .expect_code(0);
    let id = built.output("id").unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    // Tag: both names must be granted images.
    run(env.probe("docker-tag").args([
        "--allow-image",
        &images,
        "-c",
        &format!("source={local}"),
        "-c",
        &format!("target={remote}"),
    ]))
    .expect_code(1)
    .stderr_has(&format!("--allow-image {remote}"));
    let tag_grants = ["--allow-image", &images, "--allow-image", &remote_images];
    run(env.probe("docker-tag").args(tag_grants).args([
        "-c",
        &format!("source={local}"),
        "-c",
        &format!("target={remote}"),
    ]))
    .expect_code(0);

    // Push: refused without --allow-push, then into the real registry.
    run(env
        .probe("docker-push")
        .args(tag_grants)
        .args(["-c", &format!("image={remote}")]))
    .expect_code(1)
    .stderr_has("grant it with --allow-push");
    run(env.probe("docker-push").args(tag_grants).args([
        "--allow-push",
        "-c",
        &format!("image={remote}"),
    ]))
    .expect_code(0);
    let tags = Command::new("curl")
        .args([
            "-s",
            &format!("http://127.0.0.1:{}/v2/{name}/tags/list", registry.port),
        ])
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(
        tags.contains("\"v1\""),
        "registry does not list the pushed tag: {tags}"
    );
}
