//! Driving the `weft` binary as a user does, for the `weft local` tests.
#![allow(dead_code)] // each test file uses a different part

use std::process::Command;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A local mesh in its own state directory, brought down when dropped
/// (also when a test fails).
pub struct Local {
    pub dir: tempfile::TempDir,
}

impl Local {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `weft ARGS` with this mesh's state directory.
    pub fn weft(&self) -> Command {
        let mut cmd = Command::new(WEFT);
        cmd.env("WEFT_LOCAL_DIR", self.dir.path())
            .env("RUST_BACKTRACE", "0");
        cmd
    }

    /// `weft local ARGS`: success, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .weft()
            .arg("local")
            .args(args)
            .output()
            .expect("running weft");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `weft local ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "weft local {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// `weft ARGS` (not under `local`), which must succeed; its stdout.
    pub fn top(&self, args: &[&str]) -> String {
        let out = self.weft().args(args).output().expect("running weft");
        assert!(
            out.status.success(),
            "weft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file into the state directory's parent, returning its path.
    pub fn file(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// The HTTP status `pod` gets from `url` ("000" when refused or reset).
    pub fn curl(&self, pod: &str, url: &str) -> String {
        let out = self
            .weft()
            .args([
                "local",
                "exec",
                pod,
                "--",
                "curl",
                "-s",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Brings the example mesh up.
    pub fn up_examples(&self) -> String {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
        self.ok(&["up", "-f", examples.to_str().unwrap()])
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// An echo server (one line in, the same line out) on port 7000, as pod
/// demo/echo on n2 behind service echo.demo.
pub const ECHO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: demo, labels: {app: echo}}
spec:
  nodeName: n2
  serviceAccountName: echo
  containers:
  - name: echo
    command:
    - python3
    - -u
    - -c
    - |
      import socketserver
      class Echo(socketserver.StreamRequestHandler):
          def handle(self):
              for line in self.rfile:
                  self.wfile.write(line)
      socketserver.ThreadingTCPServer.allow_reuse_address = True
      socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo).serve_forever()
    ports: [{containerPort: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{port: 7000}]
"#;
