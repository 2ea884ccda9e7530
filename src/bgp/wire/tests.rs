use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn open_round_trips_with_four_octet_as() {
    let bytes = open(4_200_000_001, 9, Ipv4Addr::new(192, 0, 2, 11), Family::V4);
    assert_eq!(frame(&bytes).unwrap(), Some(bytes.len()));
    let Message::Open(o) = decode(&bytes).unwrap() else {
        panic!("not an OPEN");
    };
    assert_eq!(o.asn, 4_200_000_001);
    assert!(o.four_octet);
    assert_eq!(o.hold_time, 9);
    assert_eq!(o.router_id, Ipv4Addr::new(192, 0, 2, 11));
    // The 2-octet field holds AS_TRANS.
    assert_eq!(&bytes[20..22], &(AS_TRANS as u16).to_be_bytes());
}

#[test]
fn open_without_the_capability_reads_the_two_octet_as() {
    let mut body = vec![4, 0xfd, 0xe8, 0, 90, 10, 0, 0, 1, 0];
    let msg = message(OPEN, &body);
    let Message::Open(o) = decode(&msg).unwrap() else {
        panic!("not an OPEN");
    };
    assert_eq!((o.asn, o.four_octet), (65000, false));
    body[0] = 3;
    let err = decode(&message(OPEN, &body)).unwrap_err();
    assert_eq!((err.code, err.subcode, err.data), (2, 1, vec![0, 4]));
}

#[test]
fn open_faults_have_their_codes() {
    let base = [4u8, 0xfd, 0xe8, 0, 90, 10, 0, 0, 1, 0];
    let mut hold = base;
    hold[4] = 2;
    assert_eq!(decode(&message(OPEN, &hold)).unwrap_err().subcode, 6);
    let mut id = base;
    id[5..9].copy_from_slice(&[0; 4]);
    assert_eq!(decode(&message(OPEN, &id)).unwrap_err().subcode, 3);
    let mut params = base.to_vec();
    params[9] = 3;
    params.extend_from_slice(&[1, 1, 0]);
    assert_eq!(decode(&message(OPEN, &params)).unwrap_err().subcode, 4);
    let mut short = base.to_vec();
    short[9] = 4;
    short.extend_from_slice(&[2, 9, 65, 4]);
    assert_eq!(decode(&message(OPEN, &short)).unwrap_err().subcode, 0);
}

#[test]
fn header_faults_have_their_codes() {
    let mut k = keepalive();
    k[0] = 0;
    assert_eq!(frame(&k).unwrap_err().subcode, 1);
    let mut k = keepalive();
    k[18] = 9;
    let e = frame(&k).unwrap_err();
    assert_eq!((e.code, e.subcode, e.data), (1, 3, vec![9]));
    let mut k = keepalive();
    k[17] = 20;
    assert_eq!(frame(&k).unwrap_err().subcode, 2);
    let mut big = keepalive();
    big[16..18].copy_from_slice(&5000u16.to_be_bytes());
    big[18] = UPDATE;
    assert_eq!(frame(&big).unwrap_err().subcode, 2);
    assert_eq!(frame(&k[..10]).unwrap(), None);
}

#[test]
fn updates_from_a_peer_are_checked_for_layout() {
    assert_eq!(decode(&update(&[], &[], &[])).unwrap(), Message::Update);
    let bad = message(UPDATE, &[0, 0, 0, 9, 1]);
    let e = decode(&bad).unwrap_err();
    assert_eq!((e.code, e.subcode), (3, 1));
    let bad = message(UPDATE, &[0, 9, 0, 0]);
    assert_eq!(decode(&bad).unwrap_err().code, 3);
}

#[test]
fn ipv4_announce_and_withdraw_layout() {
    let path = Path {
        local_as: 65011,
        external: true,
        four_octet: true,
    };
    let msgs = announce(
        &[net("198.51.100.10/32")],
        "10.0.1.2".parse().unwrap(),
        path,
    );
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(decode(m).unwrap(), Message::Update);
    let body = &m[HEADER_LEN..];
    assert_eq!(&body[..2], &[0, 0]);
    let attrs_len = usize::from(u16::from_be_bytes([body[2], body[3]]));
    let attrs = &body[4..4 + attrs_len];
    assert_eq!(
        attrs,
        &[
            0x40, 1, 1, 0, // ORIGIN IGP
            0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xf3, // AS_PATH (65011)
            0x40, 3, 4, 10, 0, 1, 2, // NEXT_HOP
        ]
    );
    assert_eq!(&body[4 + attrs_len..], &[32, 198, 51, 100, 10]);
    let w = withdraw(&[net("198.51.100.10/32")], Family::V4);
    assert_eq!(&w[0][HEADER_LEN..], &[0, 5, 32, 198, 51, 100, 10, 0, 0]);
}

#[test]
fn ipv6_goes_in_mp_attributes() {
    let path = Path {
        local_as: 65011,
        external: false,
        four_octet: true,
    };
    let msgs = announce(&[net("2001:db8::10/128")], "fd00::2".parse().unwrap(), path);
    let body = &msgs[0][HEADER_LEN..];
    let attrs_len = usize::from(u16::from_be_bytes([body[2], body[3]]));
    assert_eq!(
        4 + attrs_len,
        body.len(),
        "no IPv4 NLRI after the attributes"
    );
    // ORIGIN, empty AS_PATH, LOCAL_PREF, then MP_REACH_NLRI.
    let attrs = &body[4..];
    assert_eq!(&attrs[..4], &[0x40, 1, 1, 0]);
    assert_eq!(&attrs[4..7], &[0x40, 2, 0]);
    assert_eq!(&attrs[7..14], &[0x40, 5, 4, 0, 0, 0, 100]);
    assert_eq!(&attrs[14..16], &[0x80, 14]);
    let reach = &attrs[17..];
    assert_eq!(&reach[..4], &[0, 2, 1, 16]);
    assert_eq!(reach[20], 0, "reserved");
    assert_eq!(reach[21], 128);
    let w = withdraw(&[net("2001:db8::10/128")], Family::V6);
    assert_eq!(decode(&w[0]).unwrap(), Message::Update);
    assert_eq!(&w[0][HEADER_LEN + 4..HEADER_LEN + 9], &[0x80, 15, 20, 0, 2]);
}

#[test]
fn two_octet_peers_get_as_trans_and_as4_path() {
    let path = Path {
        local_as: 4_200_000_001,
        external: true,
        four_octet: false,
    };
    let msgs = announce(
        &[net("198.51.100.10/32")],
        "10.0.0.2".parse().unwrap(),
        path,
    );
    let body = &msgs[0][HEADER_LEN..];
    let attrs = &body[4..];
    assert_eq!(&attrs[4..11], &[0x40, 2, 4, 2, 1, 0x5b, 0xa0]);
    assert_eq!(&attrs[11..14], &[0xc0, 17, 6]);
}

#[test]
fn many_prefixes_are_split_and_long_attributes_extended() {
    let many: Vec<IpNet> = (0..450u32)
        .map(|i| IpNet::from(IpAddr::from(std::net::Ipv6Addr::from(i as u128 + 1))))
        .collect();
    let path = Path {
        local_as: 65011,
        external: true,
        four_octet: true,
    };
    let msgs = announce(&many, "fd00::2".parse().unwrap(), path);
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        assert!(m.len() <= MAX_LEN);
        assert_eq!(decode(m).unwrap(), Message::Update);
    }
    for m in withdraw(&many, Family::V6) {
        assert!(m.len() <= MAX_LEN);
    }
}

#[test]
fn notification_round_trips() {
    let n = Notification::new(6, 2, b"bye");
    let bytes = notification(&n);
    assert_eq!(decode(&bytes).unwrap(), Message::Notification(n.clone()));
    assert_eq!(n.to_string(), "administrative shutdown (6/2)");
}
