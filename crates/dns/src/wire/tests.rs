use super::*;
use crate::zone::{Config, Kind, Source};
use hickory_proto::op::Query;

fn zone() -> Zone {
    let cfg = Config::new(
        "weft.local",
        5,
        vec![
            "10.32.0.0/12".parse().unwrap(),
            "fd32::/48".parse().unwrap(),
        ],
    )
    .unwrap();
    let src = |name: &str, addrs: &[&str]| Source {
        name: name.into(),
        namespace: Some("default".into()),
        aliases: vec![],
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        node: "h1".into(),
        kind: Kind::Endpoint,
    };
    let many: Vec<String> = (0..50).map(|i| format!("10.32.9.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    Zone::build(
        cfg,
        &[
            src("a", &["10.32.0.2"]),
            src("b", &["10.32.1.2", "fd32::1:2"]),
            src("b", &["10.32.2.2"]),
            src("many", &many),
        ],
    )
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(name: &str, t: RecordType, edns: Option<u16>, tr: Transport) -> Message {
    match respond(&zone(), &query(name, t, edns), tr, 7) {
        Action::Reply(b) => {
            if tr == Transport::Udp {
                let limit = edns.map_or(512, |s| s.clamp(512, 4096));
                assert!(b.len() <= usize::from(limit), "{} > {limit}", b.len());
            }
            Message::from_vec(&b).unwrap()
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn has_soa(m: &Message, apex: &str) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)) && lower(&r.name) == apex)
}

#[test]
fn a_name_on_two_hosts_answers_both_addresses_of_the_family_asked() {
    let m = ask("b.weft.local.", RecordType::A, None, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_available);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(
        addrs(&m),
        [
            "10.32.1.2".parse::<IpAddr>().unwrap(),
            "10.32.2.2".parse().unwrap()
        ]
    );
    assert!(m.answers.iter().all(|r| r.ttl == 5));
    let m = ask(
        "b.default.weft.local.",
        RecordType::AAAA,
        None,
        Transport::Udp,
    );
    assert_eq!(addrs(&m), ["fd32::1:2".parse::<IpAddr>().unwrap()]);
}

#[test]
fn an_ipv4_only_name_answers_aaaa_and_mx_with_noerror_empty_and_the_soa() {
    for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let m = ask("a.weft.local.", t, None, Transport::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty());
        assert!(has_soa(&m, "weft.local"), "{t}");
    }
}

#[test]
fn an_unknown_name_in_the_domain_is_nxdomain_with_the_soa() {
    let m = ask("nope.weft.local.", RecordType::A, None, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa(&m, "weft.local"));
    let soa = m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.minimum),
        _ => None,
    });
    assert_eq!(soa, Some(5));
    // A namespace has names below it: it exists, empty.
    let m = ask("default.weft.local.", RecordType::A, None, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && has_soa(&m, "weft.local"));
    let m = ask("weft.local.", RecordType::SOA, None, Transport::Udp);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
}

#[test]
fn case_does_not_matter_and_the_question_is_kept_as_asked() {
    let m = ask("B.Weft.LOCAL.", RecordType::A, None, Transport::Udp);
    assert_eq!(addrs(&m).len(), 2);
    assert_eq!(m.queries[0].name().to_ascii(), "B.Weft.LOCAL.");
    assert_eq!(m.answers[0].name.to_ascii(), "B.Weft.LOCAL.");
}

#[test]
fn a_single_label_is_looked_up_in_the_domain_else_forwarded() {
    let m = ask("a.", RecordType::A, None, Transport::Udp);
    assert_eq!(addrs(&m), ["10.32.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        respond(
            &zone(),
            &query("zz.", RecordType::A, None),
            Transport::Udp,
            1
        ),
        Action::Forward
    );
    assert_eq!(
        respond(
            &zone(),
            &query("example.com.", RecordType::A, None),
            Transport::Udp,
            1
        ),
        Action::Forward
    );
}

#[test]
fn ptr_for_both_families_and_nxdomain_inside_the_pools_only() {
    let m = ask(
        "2.0.32.10.in-addr.arpa.",
        RecordType::PTR,
        None,
        Transport::Udp,
    );
    let names: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["a.default.weft.local."]);
    let v6 = crate::zone::reverse_name("fd32::1:2/128".parse().unwrap());
    let m = ask(
        &format!("{}.", v6.to_uppercase()),
        RecordType::PTR,
        None,
        Transport::Udp,
    );
    assert_eq!(m.answers.len(), 1);
    let m = ask(
        "9.8.32.10.IN-ADDR.ARPA.",
        RecordType::PTR,
        None,
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa(&m, "10.in-addr.arpa"));
    assert_eq!(
        respond(
            &zone(),
            &query("8.8.8.8.in-addr.arpa.", RecordType::PTR, None),
            Transport::Udp,
            1
        ),
        Action::Forward
    );
}

#[test]
fn fifty_addresses_are_cut_at_a_record_over_udp_and_whole_over_tcp() {
    let m = ask("many.weft.local.", RecordType::A, None, Transport::Udp);
    assert!(m.metadata.truncation);
    assert!(
        !m.answers.is_empty() && m.answers.len() < 50,
        "{}",
        m.answers.len()
    );
    let m = ask("many.weft.local.", RecordType::A, Some(700), Transport::Udp);
    assert!(m.metadata.truncation && m.edns.is_some());
    let m = ask(
        "many.weft.local.",
        RecordType::A,
        Some(4096),
        Transport::Udp,
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 50);
    let m = ask("many.weft.local.", RecordType::A, None, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 50);
}

#[test]
fn answers_are_shuffled_by_the_seed() {
    let q = query("many.weft.local.", RecordType::A, Some(4096));
    let order = |seed| match respond(&zone(), &q, Transport::Udp, seed) {
        Action::Reply(b) => Message::from_vec(&b)
            .unwrap()
            .answers
            .iter()
            .map(|r| format!("{:?}", r.data))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_ne!(order(1), order(2));
    assert_eq!(order(3), order(3));
}

#[test]
fn bad_messages_get_formerr_notimp_badvers_or_nothing() {
    // Garbage after a query header: FORMERR with its id.
    let mut junk = query("a.weft.local.", RecordType::A, None);
    junk.truncate(20);
    match respond(&zone(), &junk, Transport::Udp, 1) {
        Action::Reply(b) => {
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(m.metadata.id, 0x1234);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        respond(&zone(), &[1, 2, 3], Transport::Udp, 1),
        Action::Drop
    );
    // A response is never answered.
    let mut r = Message::from_vec(&query("a.weft.local.", RecordType::A, None)).unwrap();
    r.metadata.message_type = MessageType::Response;
    assert_eq!(
        respond(&zone(), &r.to_vec().unwrap(), Transport::Udp, 1),
        Action::Drop
    );
    let mut m = Message::from_vec(&query("a.weft.local.", RecordType::A, None)).unwrap();
    m.metadata.op_code = OpCode::Status;
    let Action::Reply(b) = respond(&zone(), &m.to_vec().unwrap(), Transport::Udp, 1) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&b).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    let mut m = Message::from_vec(&query("a.weft.local.", RecordType::A, Some(1232))).unwrap();
    if let Some(e) = m.edns.as_mut() {
        e.set_version(1);
    }
    let Action::Reply(b) = respond(&zone(), &m.to_vec().unwrap(), Transport::Udp, 1) else {
        panic!()
    };
    // 16 is both BADVERS and BADSIG in the registry; hickory reads it back as BADSIG.
    assert_eq!(
        u16::from(Message::from_vec(&b).unwrap().metadata.response_code),
        16
    );
    let mut m = Message::from_vec(&query("a.weft.local.", RecordType::A, None)).unwrap();
    m.queries.push(m.queries[0].clone());
    let Action::Reply(b) = respond(&zone(), &m.to_vec().unwrap(), Transport::Udp, 1) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&b).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn servfail_keeps_the_question_and_upstream_answers_are_matched_by_id() {
    let q = query("example.com.", RecordType::A, Some(1232));
    let b = servfail(&q).unwrap();
    let m = Message::from_vec(&b).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
    assert!(answers(&q, &b));
    assert!(!answers(&q, &q));
    assert!(servfail(&[0; 5]).is_none());
}

#[test]
fn a_zone_without_config_forwards_everything() {
    assert_eq!(
        respond(
            &Zone::default(),
            &query("a.weft.local.", RecordType::A, None),
            Transport::Udp,
            1
        ),
        Action::Forward
    );
}

proptest::proptest! {
    #[test]
    fn any_bytes_never_panic_and_udp_answers_fit(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        if let Action::Reply(b) = respond(&zone(), &bytes, Transport::Udp, 1) {
            proptest::prop_assert!(b.len() <= 4096);
        }
    }
}
