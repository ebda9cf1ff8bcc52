//! Between the CNI plugin and the node agent: one JSON request and one JSON
//! answer per connection on a unix stream socket, each a line.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// What the plugin asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum PluginRequest {
    /// A pod's sandbox is being set up: capture it if it is in the mesh,
    /// and answer only once ztunnel has it.
    Add {
        container_id: String,
        netns: String,
        namespace: String,
        name: String,
    },
    /// The sandbox is going away.
    Del { container_id: String },
    /// Is the sandbox still as ADD left it?
    Check {
        container_id: String,
        namespace: String,
        name: String,
    },
    /// Can ADDs be served?
    Status,
    /// Sandboxes the runtime still has; the rest are stale.
    Gc { valid: Vec<String> },
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum PluginAnswer {
    /// The pod is in the mesh and ztunnel serves it.
    Captured,
    /// The pod is not in the mesh; nothing was done.
    Outside,
    /// Done (DEL, CHECK, STATUS, GC).
    Ok,
    /// Failed; `retry` says whether trying again later can help.
    Failed { message: String, retry: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the node agent is unreachable at {socket}: {source}")]
    Unreachable {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the node agent at {socket} did not answer: {source}")]
    NoAnswer {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the node agent at {socket} answered something unreadable: {source}")]
    Garbled {
        socket: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Asks the agent at `socket` and waits at most `timeout` for the answer.
pub fn ask(
    socket: &Path,
    request: &PluginRequest,
    timeout: Duration,
) -> Result<PluginAnswer, ApiError> {
    let name = || socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiError::Unreachable {
        socket: name(),
        source,
    })?;
    let no_answer = |source| ApiError::NoAnswer {
        socket: name(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    stream.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(no_answer)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(no_answer)?;
    if answer.is_empty() {
        return Err(no_answer(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof,
        )));
    }
    serde_json::from_str(&answer).map_err(|source| ApiError::Garbled {
        socket: name(),
        source,
    })
}
