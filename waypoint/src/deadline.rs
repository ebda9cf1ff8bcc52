//! A route's `timeouts.request` (and a gRPC client's deadline) covers the
//! whole exchange, as Envoy's route timeout does: a response whose body is
//! still coming when it passes is cut — a gRPC one ends with
//! `grpc-status: 4` (DEADLINE_EXCEEDED) in its trailers, any other is
//! reset (HTTP/2) or its connection closed (HTTP/1.1), never passed off as
//! complete.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::BodyError;

/// The error a body cut by its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the route's timeout passed before the response ended")]
pub struct ResponseTimeout;

/// `inner`, cut at `deadline`.
pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    grpc: bool,
    done: bool,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant, grpc: bool) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            grpc,
            done: false,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.done = true;
            }
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.done = true;
        if self.grpc {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("4"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("upstream request timeout"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(Some(Err(Box::new(ResponseTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// A body that sends "a", then waits `gap`, then sends "b".
    fn slow(gap: Duration) -> http_body_util::combinators::BoxBody<Bytes, BodyError> {
        let frames = futures::stream::iter([0u8, 1]).then(move |i| async move {
            if i == 1 {
                tokio::time::sleep(gap).await;
            }
            Ok::<_, BodyError>(Frame::data(Bytes::from(if i == 0 { "a" } else { "b" })))
        });
        BodyExt::boxed(StreamBody::new(frames))
    }

    #[tokio::test]
    async fn a_body_done_in_time_is_untouched() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let body = Deadline::new(slow(Duration::from_millis(10)), deadline, false);
        let bytes = body.collect().await.expect("whole").to_bytes();
        assert_eq!(bytes, "ab");
    }

    #[tokio::test]
    async fn a_late_body_is_cut_with_an_error_or_grpc_trailers() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut body = Deadline::new(slow(Duration::from_secs(5)), deadline, false);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"a"[..]));
        let cut = body.frame().await.expect("an error");
        assert!(cut.unwrap_err().is::<ResponseTimeout>());
        assert!(body.frame().await.is_none(), "nothing after the cut");

        let deadline = Instant::now() + Duration::from_millis(50);
        let mut body = Deadline::new(slow(Duration::from_secs(5)), deadline, true);
        let _ = body.frame().await;
        let trailers = body
            .frame()
            .await
            .expect("trailers")
            .expect("not an error")
            .into_trailers()
            .expect("a trailers frame");
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.frame().await.is_none());
    }
}
