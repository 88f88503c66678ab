//! Tests of the failure detector: the wire format, the watcher's merge rules and the
//! phi-accrual math.

use super::*;

fn detector(node: u64) -> FailureDetector {
    let config = DetectorConfig {
        interval: Duration::from_millis(10),
        std_deviation_min: Duration::from_millis(2),
        acceptable_pause: Duration::from_millis(5),
        ..DetectorConfig::default()
    };
    FailureDetector::new(config, NodeId(node), Role::DataNode, 1, 7, Time::ZERO)
}

fn beat(node: u64, incarnation: u64, counter: u64) -> Heartbeat {
    Heartbeat {
        node: NodeId(node),
        incarnation,
        counter,
        role: Role::DataNode,
        load: 0,
        addresses: Arc::default(),
    }
}

#[test]
fn phi_grows_with_silence() {
    assert!(phi(10.0, 10.0, 2.0) < 1.0);
    assert!(
        phi(20.0, 10.0, 2.0) > 7.0,
        "five deviations late is phi about 7.3"
    );
    assert!(phi(30.0, 10.0, 2.0) > phi(20.0, 10.0, 2.0));
}

#[test]
fn a_steady_peer_is_trusted_and_a_silent_one_suspected() {
    let mut watcher = detector(1);
    let mut now = Time::ZERO;
    for counter in 1..=50 {
        now = Time(counter * 10_000);
        watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
    }
    assert!(!watcher.is_suspected(now.saturating_add(Duration::from_millis(12)), NodeId(2)));
    assert!(watcher.is_suspected(now.saturating_add(Duration::from_millis(60)), NodeId(2)));
}

/// Before a peer has enough samples, phi assumes the gossip spread time of the
/// cluster: a far member of a large cluster is not suspected after a few intervals of
/// silence, and a small cluster still suspects a silent member within a second.
#[test]
fn warm_up_assumes_the_gossip_spread_time_of_the_cluster() {
    let mut small = detector(1);
    small.merge(
        Time(10_000),
        NodeId(2),
        &(2..=5).map(|node| beat(node, 1, 1)).collect::<Vec<_>>(),
    );
    assert_eq!(small.first_estimate_intervals(), 2.0);
    let mut large = detector(1);
    large.merge(
        Time(10_000),
        NodeId(2),
        &(2..=1000).map(|node| beat(node, 1, 1)).collect::<Vec<_>>(),
    );
    assert_eq!(large.first_estimate_intervals(), 5.0);
    // Four intervals of silence after one heartbeat: normal in a large cluster.
    let silence = Time(10_000 + 40_000);
    assert!(!large.is_suspected(silence, NodeId(700)));
    assert!(small.is_suspected(Time(10_000 + 100_000), NodeId(3)));
    // Once warmed up, the measured gaps take over.
    let mut now = Time(10_000);
    for counter in 2..=(WARM_UP_SAMPLES as u64 + 2) {
        now = Time(counter * 10_000);
        large.merge(now, NodeId(700), &[beat(700, 1, counter)]);
    }
    assert!(large.is_suspected(now.saturating_add(Duration::from_millis(60)), NodeId(700)));
}

#[test]
fn a_restarted_peer_refutes_suspicion_with_a_new_incarnation() {
    let mut watcher = detector(1);
    for counter in 1..=20 {
        watcher.merge(Time(counter * 10_000), NodeId(2), &[beat(2, 1, counter)]);
    }
    let later = Time(1_000_000);
    assert!(watcher.is_suspected(later, NodeId(2)));
    // An older counter of the old incarnation changes nothing; the new incarnation does.
    watcher.merge(later, NodeId(2), &[beat(2, 1, 3)]);
    assert!(watcher.is_suspected(later, NodeId(2)));
    watcher.merge(later, NodeId(2), &[beat(2, 2, 1)]);
    assert!(!watcher.is_suspected(later, NodeId(2)));
}

#[test]
fn rounds_bump_the_counter_and_pick_fanout_peers() {
    let mut node = detector(1);
    let peers: Vec<NodeId> = (1..=10).map(NodeId).collect();
    let (targets, digest) = node.round(Time::ZERO, &peers).unwrap();
    assert_eq!(targets.len(), 3);
    assert!(!targets.contains(&NodeId(1)));
    assert_eq!(digest[0].counter, 1);
    assert!(node.round(Time(1), &peers).is_none(), "not due yet");
    let (_, digest) = node.round(Time(10_000), &peers).unwrap();
    assert_eq!(digest[0].counter, 2);
}

/// Every client process is a fresh member: one silent past `forget_client_after` is
/// dropped (no longer suspected, not in the view), stale gossip of it does not bring it
/// back, a genuinely new heartbeat does; a silent data node stays suspected.
#[test]
fn silent_clients_are_forgotten_and_stay_forgotten_but_data_nodes_do_not() {
    let mut node = detector(1);
    let client = |counter| Heartbeat {
        role: Role::Client,
        ..beat(7, 1, counter)
    };
    let ms = |millis: u64| Time(millis * 1_000);
    for counter in 1..=20 {
        node.merge(
            ms(counter * 10),
            NodeId(2),
            &[client(counter), beat(2, 1, counter)],
        );
    }
    assert!(node.suspected(ms(1_000)).contains(&NodeId(7)));
    assert!(node.suspected(ms(1_000)).contains(&NodeId(2)));
    // Past the forget period (60 s by default), at the next round.
    let later = ms(200 + 60_000 + 10);
    node.round(later, &[NodeId(2)]);
    let suspected = node.suspected(later);
    assert!(!suspected.contains(&NodeId(7)), "the client is forgotten");
    assert!(
        suspected.contains(&NodeId(2)),
        "a dead data node stays suspected"
    );
    assert!(node
        .view(later)
        .iter()
        .all(|(beat, _)| beat.node != NodeId(7)));
    // Another member still gossips the client's last heartbeat: ignored.
    node.merge(later, NodeId(2), &[client(20), client(19)]);
    assert!(
        node.phi(later, NodeId(7)).is_none(),
        "a stale copy is not a new member"
    );
    // A new counter: the client is alive after all.
    node.merge(later, NodeId(2), &[client(21)]);
    assert!(node.phi(later, NodeId(7)).is_some());
}

/// A member's addresses travel with its counters, also relayed by others, so a member
/// that moved is found by those it never heard directly; gossip beyond the bounds is
/// cut.
#[test]
fn addresses_spread_with_heartbeats_and_are_bounded() {
    let mut moved = detector(1);
    moved.set_addresses(vec![Address(b"old".to_vec())]);
    let mut relay = detector(2);
    let mut far = detector(3);
    let (_, digest) = moved.round(Time(0), &[NodeId(2)]).unwrap();
    relay.merge(Time(0), NodeId(1), &digest);
    far.merge(Time(0), NodeId(2), &relay.digest());
    assert_eq!(far.addresses(NodeId(1)), &[Address(b"old".to_vec())]);
    // Restarted on a new address: the newer heartbeat replaces the old address.
    let mut restarted = FailureDetector::new(
        moved.config().clone(),
        NodeId(1),
        Role::DataNode,
        2,
        7,
        Time(0),
    );
    restarted.set_addresses(vec![Address(b"new".to_vec())]);
    let (_, digest) = restarted.round(Time(10_000), &[NodeId(2)]).unwrap();
    relay.merge(Time(10_000), NodeId(1), &digest);
    assert_eq!(relay.addresses(NodeId(1)), &[Address(b"new".to_vec())]);
    // Relayed, the restart is only a hint: the new address is added to dial, the
    // incarnation waits for the member's own word, which then replaces the old.
    far.merge(Time(10_000), NodeId(2), &relay.digest());
    assert_eq!(
        far.addresses(NodeId(1)),
        &[Address(b"old".to_vec()), Address(b"new".to_vec())]
    );
    far.merge(Time(10_000), NodeId(1), &digest);
    assert_eq!(far.addresses(NodeId(1)), &[Address(b"new".to_vec())]);
    assert!(far.addresses(NodeId(9)).is_empty());
    // A heartbeat with too many or too long addresses is cut when decoded, not
    // refused.
    let mut bloated = beat(4, 1, 1);
    bloated.addresses = core::iter::once(Address(vec![0; ADDRESS_BYTES_MAX + 1]))
        .chain((0..10).map(|index| Address(vec![index; 8])))
        .collect();
    let frame = crate::encode(&[crate::Message::Gossip {
        heartbeats: vec![bloated],
    }])
    .unwrap();
    let Some(crate::Message::Gossip { heartbeats }) =
        crate::decode(&frame).unwrap().into_iter().next()
    else {
        panic!("a gossip message decodes as one");
    };
    far.merge(Time(20_000), NodeId(4), &heartbeats);
    let kept = far.addresses(NodeId(4));
    assert_eq!(kept.len(), ADDRESSES_MAX);
    assert!(kept.iter().all(|address| address.0.len() == 8));
}

/// A relay (any member holding a key) forges a heartbeat of a live member with the
/// largest incarnation and counter and role Left: nothing that matters changes (the
/// member is not Left, its own heartbeats still count, it is not suspected), and a
/// restart (a higher own incarnation) still refutes suspicion.
#[test]
fn a_relayed_forgery_cannot_mark_a_live_member_left_or_silence_it() {
    let mut watcher = detector(1);
    let mut now = Time::ZERO;
    for counter in 1..=20 {
        now = Time(counter * 10_000);
        watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
    }
    let forged = Heartbeat {
        role: Role::Left,
        ..beat(2, u64::MAX, u64::MAX)
    };
    watcher.merge(now, NodeId(3), &[forged]);
    let forged_counter = Heartbeat {
        role: Role::Left,
        ..beat(2, 1, u64::MAX)
    };
    watcher.merge(now, NodeId(3), &[forged_counter]);
    assert!(watcher.left().is_empty());
    // The member's own heartbeats keep arriving and counting.
    for counter in 21..=40 {
        now = Time(counter * 10_000);
        watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
    }
    let view = watcher.view(now);
    assert_eq!(view[0].0.incarnation, 1);
    assert_eq!(view[0].0.counter, 40);
    assert!(!watcher.is_suspected(now.saturating_add(Duration::from_millis(12)), NodeId(2)));
    // Relayed honest copies still advance the counter, by bounded steps only.
    watcher.merge(now, NodeId(3), &[beat(2, 1, 41)]);
    watcher.merge(
        now,
        NodeId(3),
        &[beat(2, 1, 41 + RELAYED_COUNTER_SLACK + 1)],
    );
    assert_eq!(watcher.view(now)[0].0.counter, 41);
    // Silent, then restarted: the new own incarnation refutes suspicion.
    let later = Time(2_000_000);
    assert!(watcher.is_suspected(later, NodeId(2)));
    watcher.merge(later, NodeId(3), &[beat(2, 2, 1)]);
    assert!(
        watcher.is_suspected(later, NodeId(2)),
        "a relay cannot restart it"
    );
    watcher.merge(later, NodeId(2), &[beat(2, 2, 1)]);
    assert!(!watcher.is_suspected(later, NodeId(2)));
    // Its own Left is believed.
    let left = Heartbeat {
        role: Role::Left,
        ..beat(2, 2, 2)
    };
    watcher.merge(later, NodeId(2), &[left]);
    assert!(watcher.left().contains(&NodeId(2)));
}

/// A member first heard through a relay may be introduced with a forged incarnation;
/// its own next heartbeat undoes it. A relayed Left or Draining introduces nothing.
#[test]
fn a_forged_introduction_is_undone_by_the_members_own_heartbeat() {
    let mut watcher = detector(1);
    watcher.merge(Time(10_000), NodeId(3), &[beat(2, u64::MAX, u64::MAX)]);
    watcher.merge(Time(20_000), NodeId(2), &[beat(2, 1, 5)]);
    let view = watcher.view(Time(20_000));
    assert_eq!((view[0].0.incarnation, view[0].0.counter), (1, 5));
    for role in [Role::Left, Role::Draining] {
        let relayed = Heartbeat {
            role,
            ..beat(4, 1, 1)
        };
        watcher.merge(Time(20_000), NodeId(3), &[relayed]);
        assert!(watcher.phi(Time(20_000), NodeId(4)).is_none(), "{role:?}");
    }
    // An older own heartbeat than the member already sent changes nothing.
    watcher.merge(Time(30_000), NodeId(2), &[beat(2, 1, 4)]);
    assert_eq!(watcher.view(Time(30_000))[0].0.counter, 5);
}

/// Relays cannot grow the member map without bound.
#[test]
fn relays_introduce_at_most_peers_max_members() {
    let mut watcher = detector(1);
    let mut next = 2;
    while next < PEERS_MAX as u64 + 1_000 {
        let digest: Vec<Heartbeat> = (next..next + 500).map(|node| beat(node, 1, 1)).collect();
        watcher.merge(Time(10_000), NodeId(2), &digest);
        next += 500;
    }
    assert_eq!(watcher.view(Time(10_000)).len(), PEERS_MAX);
}

/// Heartbeats travel as compact arrays; every role survives the trip, an unknown role
/// code is a decode error, not a panic.
#[test]
fn heartbeats_encode_compactly_and_round_trip() {
    for role in [
        Role::DataNode,
        Role::Client,
        Role::Draining,
        Role::Left,
        Role::Quarantined,
    ] {
        let heartbeat = Heartbeat {
            role,
            addresses: vec![Address(vec![4, 127, 0, 0, 1, 6, 156, 65])].into(),
            ..beat(3, 2, 1_000)
        };
        let message = crate::Message::Gossip {
            heartbeats: vec![heartbeat.clone()],
        };
        let bytes = crate::encode(std::slice::from_ref(&message)).unwrap();
        assert_eq!(crate::decode(&bytes).unwrap(), vec![message]);
        let mut alone = Vec::new();
        ciborium::into_writer(&heartbeat, &mut alone).unwrap();
        assert!(alone.len() <= 20, "{} bytes", alone.len());
    }
    let mut unknown = Vec::new();
    ciborium::into_writer(
        &(3u64, 2u64, 1u64, 9u8, 0u32, Vec::<Address>::new()),
        &mut unknown,
    )
    .unwrap();
    assert!(ciborium::from_reader::<Heartbeat, _>(unknown.as_slice()).is_err());
}

#[test]
fn the_default_detection_bound_is_the_phi_crossing_plus_one_round() {
    let bound = detection_bound(&DetectorConfig::default());
    assert!(
        (Duration::from_millis(760)..=Duration::from_millis(790)).contains(&bound),
        "{bound:?}"
    );
    let slower = DetectorConfig {
        interval: Duration::from_millis(200),
        ..DetectorConfig::default()
    };
    assert!(detection_bound(&slower) > bound);
}
