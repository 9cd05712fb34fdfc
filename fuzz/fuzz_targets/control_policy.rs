//! What a sidecar does with a control-plane policy message: prost-decode a
//! `warden.control.v1.WorkloadPolicy`, validate it with `convert::from_proto`, compile it
//! and decide on it. Never panics; an accepted policy survives the round trip to the wire.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use warden_policy::{Direction, PolicySnapshot, PolicySource, SpiffeId};
use warden_proto::control::v1::WorkloadPolicy;
use warden_policy::wire as convert;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = WorkloadPolicy::decode(data) else {
        return;
    };
    let Ok(policy) = convert::from_proto(&wire) else {
        return;
    };
    let back = convert::from_proto(&convert::to_proto(&policy)).expect("round trip");
    assert_eq!(back, policy);
    let snapshot = PolicySnapshot::compile(Some(&policy), PolicySource::ControlPlane);
    let peer = SpiffeId::parse("spiffe://example.org/ns/rag/sa/retriever").expect("id");
    for (listener, _) in policy.inbound.iter() {
        let _ = snapshot.decide(Direction::Inbound, listener, &peer);
    }
    for (listener, _) in policy.outbound.iter() {
        let _ = snapshot.decide(Direction::Outbound, listener, &peer);
    }
});
