//! Arbitrary bytes as a delta-xDS response from the network: decoding and
//! applying it must reject what is malformed, never panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use weft_proxy::{
    state::ProxyState,
    xds::{handlers::Received, AddressHandler, AuthorizationHandler, ResourceHandler},
};

fuzz_target!(|data: &[u8]| {
    let Ok(response) = DeltaDiscoveryResponse::decode(data) else { return };
    let state = Arc::new(ProxyState::default());
    let handlers: [Box<dyn ResourceHandler>; 2] = [
        Box::new(AddressHandler::new(state.clone())),
        Box::new(AuthorizationHandler::new(state.clone())),
    ];
    for handler in &handlers {
        let updates = response
            .resources
            .iter()
            .map(|r| Received {
                name: r.name.clone(),
                version: r.version.clone(),
                // Interpret every payload as this handler's type, whatever
                // its type URL claims, to reach the decoders.
                resource: r.resource.clone().map(|mut any| {
                    any.type_url = handler.type_url().to_owned();
                    any
                }),
            })
            .collect();
        let _ = handler.apply(updates, &response.removed_resources);
    }
    let _ = state.dump();
});
