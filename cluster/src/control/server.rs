//! Serving an operator connection: each bidi stream carries one request, answered by the
//! node's handler.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::time::timeout;

use super::protocol::{decode_request, ControlRequest, ControlResponse};
use crate::net::wire::{self, MAX_CONTROL_FRAME};

/// How a node answers control requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        req: ControlRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControlResponse> + Send + '_>>;
}

/// How long the operator has to send its request once it opened a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one operator connection until it closes.
pub async fn serve(handler: Arc<dyn Handler>, conn: Connection) {
    loop {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let req = timeout(
                REQUEST_TIMEOUT,
                wire::read_frame_bytes(&mut recv, MAX_CONTROL_FRAME),
            )
            .await;
            let resp = match req {
                Ok(Ok(Some(frame))) => match decode_request(&frame) {
                    Ok(req) => handler.handle(req).await,
                    Err(message) => ControlResponse::Error { message },
                },
                Ok(Ok(None)) => return,
                Ok(Err(e)) => ControlResponse::Error {
                    message: format!("bad request: {e}"),
                },
                Err(_) => ControlResponse::Error {
                    message: format!("no request within {REQUEST_TIMEOUT:?}"),
                },
            };
            if wire::write_frame(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
                // let the response reach the CLI before the stream is dropped
                let _ = timeout(Duration::from_secs(5), send.stopped()).await;
            }
        });
    }
}
