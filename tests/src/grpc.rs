//! The test gRPC service (`tests/proto/echo.proto`): a server to run in a
//! pod, and the client calls `weft-probe grpc` makes from one.

use std::{collections::BTreeMap, net::SocketAddr, pin::Pin, time::Duration};

use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("weft.test.v1");
}

use pb::{
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
    CountRequest, FailRequest, SayReply, SayRequest, SlowRequest,
};

struct Server {
    name: String,
}

type Replies = Pin<Box<dyn Stream<Item = Result<SayReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Server {
    async fn say(&self, req: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        Ok(Response::new(SayReply {
            text: format!("{}: {}", self.name, req.into_inner().text),
        }))
    }

    type CountStream = Replies;

    async fn count(&self, req: Request<CountRequest>) -> Result<Response<Replies>, Status> {
        let name = self.name.clone();
        let CountRequest { count, interval_ms } = req.into_inner();
        let replies = futures::stream::unfold(1u32, move |i| {
            let name = name.clone();
            async move {
                if i > count {
                    return None;
                }
                if i > 1 && interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                }
                let reply = Ok(SayReply {
                    text: format!("{name} #{i}"),
                });
                Some((reply, i + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn fail(&self, req: Request<FailRequest>) -> Result<Response<SayReply>, Status> {
        let code = tonic::Code::from(req.into_inner().code);
        let mut status = Status::new(code, format!("{} failed as asked", self.name));
        if let Ok(value) = self.name.parse() {
            status.metadata_mut().insert("x-failed-by", value);
        }
        Err(status)
    }

    async fn slow(&self, req: Request<SlowRequest>) -> Result<Response<SayReply>, Status> {
        let delay = req.into_inner().delay_ms;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok(Response::new(SayReply {
            text: format!("{} after {delay} ms", self.name),
        }))
    }
}

/// Serves the Echo service on `listener` (HTTP/2, plaintext) until dropped.
pub fn spawn_grpc(listener: std::net::TcpListener, name: &str) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let server = EchoServer::new(Server {
        name: name.to_owned(),
    });
    Ok(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(err) = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!(%err, "test gRPC server ended");
        }
    }))
}

/// What one call came to, as `weft-probe grpc` prints it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CallReport {
    /// The gRPC status code (0: OK).
    pub code: i32,
    pub message: String,
    pub replies: Vec<String>,
    /// Response metadata other than HTTP/2 and gRPC's own.
    pub metadata: BTreeMap<String, String>,
}

/// A call `weft-probe grpc ADDR VERB ARG` makes.
#[derive(Debug)]
pub enum Call {
    Say(String),
    /// `count` replies, `interval_ms` apart.
    Count(u32, u64),
    Fail(i32),
    Slow(u64),
}

fn metadata(map: &tonic::metadata::MetadataMap) -> BTreeMap<String, String> {
    map.clone()
        .into_headers()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("grpc-") && k.as_str() != "content-type")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn failed(status: Status) -> CallReport {
    CallReport {
        code: status.code() as i32,
        message: status.message().to_owned(),
        replies: Vec::new(),
        metadata: metadata(status.metadata()),
    }
}

/// Makes `call` to `addr`, with `timeout` as its deadline when given.
pub async fn call(
    addr: SocketAddr,
    call: Call,
    timeout: Option<Duration>,
) -> Result<CallReport, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut client = EchoClient::new(channel);
    fn with_deadline<T>(message: T, timeout: Option<Duration>) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }
    let unary = |result: Result<Response<SayReply>, Status>| match result {
        Ok(response) => CallReport {
            metadata: metadata(response.metadata()),
            replies: vec![response.into_inner().text],
            ..Default::default()
        },
        Err(status) => failed(status),
    };
    Ok(match call {
        Call::Say(text) => unary(
            client
                .say(with_deadline(SayRequest { text }, timeout))
                .await,
        ),
        Call::Fail(code) => unary(
            client
                .fail(with_deadline(FailRequest { code }, timeout))
                .await,
        ),
        Call::Slow(delay_ms) => unary(
            client
                .slow(with_deadline(SlowRequest { delay_ms }, timeout))
                .await,
        ),
        Call::Count(count, interval_ms) => match client
            .count(with_deadline(CountRequest { count, interval_ms }, timeout))
            .await
        {
            Err(status) => failed(status),
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut report = CallReport::default();
                loop {
                    match stream.message().await {
                        Ok(Some(reply)) => report.replies.push(reply.text),
                        Ok(None) => break,
                        Err(status) => {
                            let replies = std::mem::take(&mut report.replies);
                            report = failed(status);
                            report.replies = replies;
                            return Ok(report);
                        }
                    }
                }
                if let Ok(Some(trailers)) = stream.trailers().await {
                    report.metadata = metadata(&trailers);
                }
                report
            }
        },
    })
}
