//! Image operations through the `docker` capability on the real engine:
//! build from a granted directory, tag, push to and pull from a real local registry
//! (Debian's docker-registry on 127.0.0.1), each refused without its grant.

use crate::common::oci_registry::Registry;
use crate::common::{Env, Exec, require_docker, unique};
use std::process::Command;

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
    require_docker!();
    let registry = Registry::start();
    let env = Env::new();
    let name = format!("runner-test-images-{}", unique());
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
    let images = format!("{name}:*");
    let remote_images = format!("127.0.0.1:*/{name}:*");
    // A build of the context as `local`, with `grants` applied.
    let build = |grants: &dyn Fn(&mut Exec) -> &mut Exec| {
        let mut exec = env.probe("docker-build");
        grants(&mut exec)
            .allow_image(&images)
            .config("context", context.display())
            .config("tag", &local);
        exec.run()
    };

    // Build: refused without --allow-build, and outside the granted directories.
    build(&|e| e)
        .expect_code(1)
        .stderr_has("grant it with --allow-build");
    build(&|e| e.allow_build())
        .expect_code(1)
        .stderr_has("is outside the granted directories");
    let built = build(&|e| e.allow_build().allow_dir(&context)).success();
    let id = built.output("id").unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    // Tag: both names must be granted images.
    env.probe("docker-tag")
        .allow_image(&images)
        .config("source", &local)
        .config("target", &remote)
        .run()
        .expect_code(1)
        .stderr_has(&format!("--allow-image {remote}"));
    // Granted both the local and the registry's names.
    let granted = |mode: &str| {
        let mut exec = env.probe(mode);
        exec.allow_image(&images).allow_image(&remote_images);
        exec
    };
    granted("docker-tag")
        .config("source", &local)
        .config("target", &remote)
        .run()
        .success();

    // Push: refused without --allow-push, then into the real registry.
    granted("docker-push")
        .config("image", &remote)
        .run()
        .expect_code(1)
        .stderr_has("grant it with --allow-push");
    granted("docker-push")
        .allow_push()
        .config("image", &remote)
        .run()
        .success();
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
