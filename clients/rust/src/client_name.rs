//! The `x-keyward-client` header: which program talks to the agent.
//!
//! Every request a [`Client`](crate::Client) sends carries it, so that the
//! agent can tell its consumers apart by kind (this library, `keyward run`,
//! another client library…), e.g. to list those that cannot report which
//! key they use. It is a label the caller chooses, not a credential: the
//! agent identifies callers by the kernel's credentials on the socket, and
//! must not trust this header for access.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

/// The gRPC metadata header that names the client program to the agent
/// (the agent reads it as `keyward_proto::CLIENT_HEADER`: the same name).
pub const CLIENT_HEADER: &str = "x-keyward-client";

/// What this library sends unless told otherwise: `rust/VERSION`.
pub(crate) const DEFAULT_CLIENT_NAME: &str = concat!("rust/", env!("CARGO_PKG_VERSION"));

/// Adds [`CLIENT_HEADER`] to each request (a tonic interceptor).
#[derive(Clone, Debug)]
pub(crate) struct ClientName(MetadataValue<Ascii>);

impl ClientName {
    /// `name`, with every character that a header cannot carry (anything
    /// but printable ASCII and the space) replaced by `_`.
    pub(crate) fn new(name: &str) -> ClientName {
        let shown: String = name
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
            .collect();
        ClientName(MetadataValue::try_from(shown.as_str()).expect("printable ASCII is a valid header value"))
    }

    /// The header's value.
    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Default for ClientName {
    fn default() -> ClientName {
        ClientName::new(DEFAULT_CLIENT_NAME)
    }
}

impl Interceptor for ClientName {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(CLIENT_HEADER, self.0.clone());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(mut name: ClientName) -> String {
        let request = name.call(tonic::Request::new(())).unwrap();
        request
            .metadata()
            .get(CLIENT_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn every_request_names_the_client() {
        assert_eq!(
            sent(ClientName::default()),
            format!("rust/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(sent(ClientName::new("run/1.2.3")), "run/1.2.3");
    }

    #[test]
    fn what_a_header_cannot_carry_is_replaced() {
        assert_eq!(sent(ClientName::new("my app\n/é1")), "my app_/_1");
        assert_eq!(ClientName::new("").as_str(), "");
    }
}
