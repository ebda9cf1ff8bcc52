//! Running the helper commands (`ip`, CNI plugins) the harness drives.

use std::process::{Command, Stdio};

use super::error::{Result, TopologyError};

/// Runs `cmd`, feeding it `stdin`, and returns its stdout; a non-zero exit is
/// an error carrying stderr (or stdout, where CNI plugins put their errors).
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<String> {
    use std::io::Write;
    let rendered = render(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| TopologyError::Spawn {
        command: rendered.clone(),
        source,
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input)
            .map_err(|source| TopologyError::Spawn {
                command: rendered.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| TopologyError::Spawn {
            command: rendered.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(TopologyError::Command {
            command: rendered,
            status: out.status.to_string(),
            stderr: if stderr.trim().is_empty() {
                stdout
            } else {
                stderr.trim().to_owned()
            },
        })
    }
}

/// `ip ARGS…` in the host namespace (only `netns` management and `-n NS`
/// commands are ever issued this way: the host's own links are not touched).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args), None)
}

fn render(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
