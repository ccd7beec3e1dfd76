//! The Event Hubs test peer (`eventhubs_peer.rs`) with the official client over a real socket:
//! a batch sent with a partition key, the hub's properties, a receiver from a sequence number.
//! (The end-to-end tests of `vitalake send` and `vitalake stream --source eventhubs:HUB` are on the
//! `eventhubs-wip` branch until `vitalake send` stops hanging now and then under parallel load.)

use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{
    ConsumerClient, EventDataBatchOptions, OpenReceiverOptions, ProducerClient, StartLocation,
    StartPosition,
};
use futures::StreamExt;

use crate::eventhubs_peer::Peer;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_client_sends_and_receives_through_the_peer() {
    vitalake::stream::event_hubs::install_tls_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
        .with_test_writer()
        .try_init();
    let peer = Peer::start("bp", 2).await;
    let producer = ProducerClient::builder()
        .with_custom_endpoint(peer.endpoint())
        .open_with_connection_string(&peer.connection_string(), None)
        .await
        .unwrap();
    let batch = producer
        .create_batch(Some(EventDataBatchOptions {
            partition_key: Some("patient-1".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    for n in 0..5 {
        assert!(
            batch
                .try_add_event_data(
                    EventData::builder()
                        .with_body(format!("event {n}").into_bytes())
                        .build(),
                    None
                )
                .unwrap()
        );
    }
    producer.send_batch(batch, None).await.unwrap();
    let stored: Vec<_> = (0..2).flat_map(|p| peer.events(p)).collect();
    assert_eq!(stored.len(), 5);
    let partition = (0..2).find(|p| !peer.events(*p).is_empty()).unwrap();

    let consumer = ConsumerClient::builder()
        .with_custom_endpoint(peer.endpoint())
        .open_with_connection_string(&peer.connection_string(), None)
        .await
        .unwrap();
    let properties = consumer.get_eventhub_properties().await.unwrap();
    assert_eq!(properties.partition_ids, ["0", "1"]);
    let receiver = consumer
        .open_receiver_on_partition(
            partition.to_string(),
            Some(OpenReceiverOptions {
                start_position: Some(StartPosition {
                    location: StartLocation::SequenceNumber(1),
                    inclusive: false,
                }),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let mut events = receiver.stream_events();
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = events.next().await.unwrap().unwrap();
        got.push((
            event.sequence_number().unwrap(),
            String::from_utf8(event.event_data().body().unwrap().to_vec()).unwrap(),
            event.partition_key().clone(),
        ));
    }
    assert_eq!(
        got,
        [
            (2, "event 2".to_string(), Some("patient-1".to_string())),
            (3, "event 3".to_string(), Some("patient-1".to_string())),
            (4, "event 4".to_string(), Some("patient-1".to_string())),
        ]
    );
}
