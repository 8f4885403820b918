//! Wire to domain: what the collector receives, decoded with prost from
//! any bytes, then converted with `event_from_wire` (every event of a
//! batch) and `facts_from_wire` (an enrolment's facts).
#![no_main]

use hallmonitor_collector::ingest::{event_from_wire, facts_from_wire};
use hallmonitor_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let received_at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    if let Ok(message) = v1::AgentMessage::decode(data)
        && let Some(v1::agent_message::Body::Batch(batch)) = message.body
    {
        for event in batch.events {
            let (event, ok) = event_from_wire(event, received_at);
            if !ok {
                // Not interpreted: kept as unrecognised, or its time was
                // bad and it was given the time received.
                assert!(event.body.kind() == "unrecognised" || event.occurred_at == received_at);
            }
        }
    }
    if let Ok(event) = v1::Event::decode(data) {
        let _ = event_from_wire(event, received_at);
    }
    if let Ok(request) = v1::EnrollRequest::decode(data)
        && let Some(facts) = request.facts
    {
        let _ = facts_from_wire(facts);
    }
});
