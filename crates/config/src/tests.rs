use super::*;
use proptest::prelude::*;
use serde_json::json;
use weft_cni::code;

fn conf(v: Value) -> NetConf {
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

fn base() -> Value {
    json!({"cniVersion": "1.0.0", "name": "weftnet", "type": "weft", "range": "10.32.1.0/24"})
}

fn with(key: &str, value: Value) -> Value {
    let mut v = base();
    v[key] = value;
    v
}

fn without(key: &str) -> Value {
    let mut v = base();
    v.as_object_mut().unwrap().remove(key);
    v
}

fn err(v: Value) -> ConfigError {
    NetworkConfig::from_netconf(&conf(v)).unwrap_err()
}

fn ok(v: Value) -> NetworkConfig {
    NetworkConfig::from_netconf(&conf(v)).unwrap()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = ok(base());
    assert_eq!(
        c,
        NetworkConfig {
            cni_version: Version::V1_0_0,
            name: "weftnet".into(),
            range: Some("10.32.1.0/24".parse().unwrap()),
            range_start: None,
            range_end: None,
            gateway: "169.254.1.1".parse().unwrap(),
            mtu: None,
            data_dir: "/var/lib/weft".into(),
            host_veth_prefix: "weft".into(),
            agent_socket: DEFAULT_AGENT_SOCKET.into(),
        }
    );
    assert_eq!(
        c.allocation_bounds(),
        Some(("10.32.1.1".parse().unwrap(), "10.32.1.254".parse().unwrap()))
    );
}

#[test]
fn full_config() {
    let c = ok(json!({
        "cniVersion": "1.1.0", "name": "n_1.x-y", "type": "weft",
        "range": "10.32.0.0/16", "rangeStart": "10.32.1.10", "rangeEnd": "10.32.1.20",
        "gateway": "169.254.0.1", "mtu": 1400, "dataDir": "/run/weft", "hostVethPrefix": "w0",
        "capabilities": {"portMappings": true}, "runtimeConfig": {}, "prevResult": {"cniVersion": "1.1.0"},
        "cni.dev/valid-attachments": [], "args": {}, "ipam": {}, "dns": {}
    }));
    assert_eq!(c.cni_version, Version::V1_1_0);
    assert_eq!(c.name, "n_1.x-y");
    assert_eq!(c.range_start, Some("10.32.1.10".parse().unwrap()));
    assert_eq!(c.range_end, Some("10.32.1.20".parse().unwrap()));
    assert_eq!(c.gateway, "169.254.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.mtu, Some(1400));
    assert_eq!(c.data_dir, "/run/weft");
    assert_eq!(c.host_veth_prefix, "w0");
    assert_eq!(
        c.allocation_bounds(),
        Some(("10.32.1.10".parse().unwrap(), "10.32.1.20".parse().unwrap()))
    );
}

#[test]
fn ipv6_config() {
    let c = ok(with("range", json!("fd00:32::/64")));
    assert_eq!(c.gateway, "fe80::1".parse::<IpAddr>().unwrap());
    assert_eq!(
        c.allocation_bounds(),
        Some((
            "fd00:32::1".parse().unwrap(),
            "fd00:32::ffff:ffff:ffff:ffff".parse().unwrap()
        ))
    );
    let mut v = with("range", json!("fd00:32::/64"));
    v["mtu"] = json!(1000);
    assert_eq!(err(v).field, "mtu");
    let mut v = with("range", json!("fd00:32::/64"));
    v["mtu"] = json!(1280);
    assert_eq!(ok(v).mtu, Some(1280));
    assert!(NetworkConfig::from_netconf(&conf(with("range", json!("fd00::/126")))).is_ok());
    assert_eq!(err(with("range", json!("fd00::/127"))).field, "range");
    assert_eq!(err(with("range", json!("fd00::/128"))).field, "range");
}

#[test]
fn display_format() {
    let e = err(with("range", json!("10.32.1.0/33")));
    assert_eq!(
        e.to_string(),
        r#"network config field "range": expected an IP network in CIDR form such as 10.32.1.0/24, found "10.32.1.0/33""#
    );
    let e = err(with("range", json!(5)));
    assert_eq!(e.found, "5");
    let c: CniError = e.into();
    assert_eq!(c.code, code::INVALID_CONFIG);
    assert!(c.msg.contains("\"range\""));
}

#[test]
fn found_is_shortened() {
    let long = "x".repeat(500);
    let e = err(with("dataDir", json!(long)));
    assert!(e.found.chars().count() <= 81);
    assert!(e.found.ends_with('…'));
}

#[test]
fn version_and_type_and_name() {
    assert_eq!(err(without("cniVersion")).field, "cniVersion");
    assert_eq!(err(with("cniVersion", json!("0.4.0"))).field, "cniVersion");
    assert_eq!(err(with("cniVersion", json!("0.4.0"))).found, "\"0.4.0\"");
    assert_eq!(err(without("type")).field, "type");
    assert_eq!(err(with("type", json!("bridge"))).field, "type");
    assert_eq!(err(without("name")).field, "name");
    for bad in ["", "a b", "a/b", "ü"] {
        assert_eq!(err(with("name", json!(bad))).field, "name", "{bad}");
    }
}

#[test]
fn unknown_keys_rejected() {
    let e = err(with("rnage", json!("10.0.0.0/24")));
    assert_eq!(e.field, "rnage");
    assert!(e.expected.contains("range"));
    assert_eq!(e.found, "\"10.0.0.0/24\"");
    for k in ["args", "ipam", "dns"] {
        assert!(
            NetworkConfig::from_netconf(&conf(with(k, json!({})))).is_ok(),
            "{k}"
        );
    }
}

#[test]
fn range_validation() {
    for bad in [
        json!("10.32.1.0/33"),
        json!("10.32.1.0"),
        json!("banana"),
        json!(5),
        json!(["10.0.0.0/8"]),
        json!("10.32.1.1/24"),
        json!("10.32.1.0/31"),
        json!("10.32.1.0/32"),
    ] {
        let e = err(with("range", bad.clone()));
        assert_eq!(e.field, "range", "{bad}");
        assert_eq!(e.found, bad.to_string());
    }
    let e = err(with("range", json!("10.32.1.1/24")));
    assert!(e.expected.contains("host bits") && e.expected.contains("10.32.1.0/24"));
    let e = err(with("range", json!("10.32.1.0/31")));
    assert!(e.expected.contains("2 usable"));
    let c = ok(with("range", json!("10.32.1.0/30")));
    assert_eq!(
        c.allocation_bounds(),
        Some(("10.32.1.1".parse().unwrap(), "10.32.1.2".parse().unwrap()))
    );
}

#[test]
fn range_start_end_validation() {
    for key in ["rangeStart", "rangeEnd"] {
        for bad in [
            json!("10.32.2.1"),
            json!("10.32.1.0"),
            json!("10.32.1.255"),
            json!("fd00::1"),
            json!("nope"),
            json!(7),
        ] {
            let e = err(with(key, bad.clone()));
            assert_eq!(e.field, key, "{bad}");
            assert!(
                e.expected.contains("10.32.1.1 to 10.32.1.254"),
                "{}",
                e.expected
            );
        }
        assert!(NetworkConfig::from_netconf(&conf(with(key, json!("10.32.1.254")))).is_ok());
        assert!(NetworkConfig::from_netconf(&conf(with(key, Value::Null))).is_ok());
    }
    let mut v = base();
    v["rangeStart"] = json!("10.32.1.100");
    v["rangeEnd"] = json!("10.32.1.50");
    let e = err(v);
    assert_eq!(e.field, "rangeEnd");
    assert!(e.expected.contains("10.32.1.100"));
    let mut v = base();
    v["rangeStart"] = json!("10.32.1.50");
    v["rangeEnd"] = json!("10.32.1.50");
    assert!(NetworkConfig::from_netconf(&conf(v)).is_ok());
}

#[test]
fn gateway_validation() {
    for bad in [
        json!("10.32.1.1"),
        json!("fe80::1"),
        json!("0.0.0.0"),
        json!("224.0.0.1"),
        json!("255.255.255.255"),
        json!("x"),
        json!(1),
    ] {
        let e = err(with("gateway", bad.clone()));
        assert_eq!(e.field, "gateway", "{bad}");
        assert!(e.expected.contains("outside range 10.32.1.0/24"));
    }
    // The default gateway inside the range needs an explicit one.
    let e = err(with("range", json!("169.254.0.0/16")));
    assert_eq!(e.field, "gateway");
    assert_eq!(e.found, "nothing");
    assert!(e.expected.contains("explicit"));
    let mut v = with("range", json!("169.254.0.0/16"));
    v["gateway"] = json!("10.0.0.1");
    assert!(NetworkConfig::from_netconf(&conf(v)).is_ok());
    let mut v = with("range", json!("fd00::/64"));
    v["gateway"] = json!("169.254.1.1");
    assert_eq!(err(v).field, "gateway");
    let mut v = with("range", json!("fd00::/64"));
    v["gateway"] = json!("fe80::2");
    assert_eq!(ok(v).gateway, "fe80::2".parse::<IpAddr>().unwrap());
}

#[test]
fn mtu_validation() {
    for bad in [
        json!(575),
        json!(65536),
        json!(-1),
        json!(1400.5),
        json!("1400"),
        json!(0),
    ] {
        let e = err(with("mtu", bad.clone()));
        assert_eq!(e.field, "mtu", "{bad}");
        assert!(e.expected.contains("576 to 65535"));
    }
    assert_eq!(ok(with("mtu", json!(576))).mtu, Some(576));
    assert_eq!(ok(with("mtu", json!(65535))).mtu, Some(65535));
    assert_eq!(ok(with("mtu", Value::Null)).mtu, None);
}

#[test]
fn data_dir_and_prefix_validation() {
    for bad in [
        json!("var/lib/weft"),
        json!(""),
        json!("/a\u{0}b"),
        json!(true),
    ] {
        assert_eq!(err(with("dataDir", bad.clone())).field, "dataDir", "{bad}");
    }
    for bad in [
        json!(""),
        json!("weftnet"),
        json!("Weft"),
        json!("w-1"),
        json!(3),
    ] {
        assert_eq!(
            err(with("hostVethPrefix", bad.clone())).field,
            "hostVethPrefix",
            "{bad}"
        );
    }
    assert_eq!(
        ok(with("hostVethPrefix", json!("abc123"))).host_veth_prefix,
        "abc123"
    );
}

#[test]
fn parse_error_codes() {
    assert_eq!(parse(b"{oops").unwrap_err().code, code::DECODE);
    assert_eq!(parse(b"[]").unwrap_err().code, code::DECODE);
    let e = parse(without("cniVersion").to_string().as_bytes()).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert_eq!(e.msg, "cniVersion is missing");
    let e = parse(with("cniVersion", json!("0.4.0")).to_string().as_bytes()).unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    let e = parse(with("mtu", json!(1)).to_string().as_bytes()).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.starts_with("network config field \"mtu\""));
    let (nc, c) = parse(base().to_string().as_bytes()).unwrap();
    assert_eq!(nc.name.as_deref(), Some("weftnet"));
    assert_eq!(c.name, "weftnet");
}

/// The runtime copies the conflist's cniVersion and name into each plugin.
fn first_plugin(conflist: &str) -> Vec<u8> {
    let list: Value = serde_json::from_str(conflist).unwrap();
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    plugin.to_string().into_bytes()
}

#[test]
fn example_conflist_shape_and_round_trip() {
    let s = example_conflist("weft", "10.32.1.0/24", "/var/lib/weft");
    assert!(s.ends_with("}\n"));
    assert!(s.contains("\n  \"cniVersion\": \"1.0.0\""));
    let list: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        list,
        json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [
                {"type": "weft", "range": "10.32.1.0/24", "dataDir": "/var/lib/weft", "capabilities": {"aliases": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}},
                {"type": "tuning"}
            ]
        })
    );
    let (_, c) = parse(&first_plugin(&s)).unwrap();
    assert_eq!(c.name, "weft");
    assert_eq!(c.range, Some("10.32.1.0/24".parse::<IpNet>().unwrap()));
    assert_eq!(c.data_dir, "/var/lib/weft");
}

#[test]
fn example_conflist_escapes() {
    let s = example_conflist("a\"b", "x", "/d");
    let list: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(list["name"], "a\"b");
}

#[test]
fn usable_bounds_edges() {
    let b = |s: &str| usable_bounds(&s.parse().unwrap());
    assert_eq!(b("10.0.0.0/31"), None);
    assert_eq!(b("10.0.0.0/32"), None);
    assert_eq!(
        b("0.0.0.0/0"),
        Some((
            "0.0.0.1".parse().unwrap(),
            "255.255.255.254".parse().unwrap()
        ))
    );
    assert_eq!(b("::/127"), None);
    assert_eq!(
        b("::/0"),
        Some((
            "::1".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()
        ))
    );
}

#[test]
fn without_a_range_addresses_come_from_the_agent() {
    for v in [without("range"), with("range", Value::Null)] {
        let c = ok(v);
        assert_eq!(c.range, None);
        assert_eq!(c.allocation_bounds(), None);
        assert_eq!(c.agent_socket, DEFAULT_AGENT_SOCKET);
        assert_eq!(c.gateway, "169.254.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            c.gateway_for(&"10.32.0.5".parse().unwrap()),
            "169.254.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.gateway_for(&"fd00::5".parse().unwrap()),
            "fe80::1".parse::<IpAddr>().unwrap()
        );
    }
    let mut v = without("range");
    v["agentSocket"] = json!("/run/x/agent.sock");
    v["gateway"] = json!("fe80::9");
    let c = ok(v);
    assert_eq!(c.agent_socket, "/run/x/agent.sock");
    assert_eq!(
        c.gateway_for(&"fd00::5".parse().unwrap()),
        "fe80::9".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        c.gateway_for(&"10.0.0.5".parse().unwrap()),
        "169.254.1.1".parse::<IpAddr>().unwrap()
    );
    for bad in [json!("relative/sock"), json!(3)] {
        let mut v = without("range");
        v["agentSocket"] = bad;
        assert_eq!(err(v).field, "agentSocket");
    }
    for key in ["rangeStart", "rangeEnd"] {
        let mut v = without("range");
        v[key] = json!("10.32.1.5");
        let e = err(v);
        assert_eq!(e.field, key);
        assert!(e.expected.contains("range"), "{}", e.expected);
    }
    let mut v = without("range");
    v["gateway"] = json!("224.0.0.1");
    assert_eq!(err(v).field, "gateway");
    // With a range, agentSocket is accepted and unused.
    assert!(ok(with("agentSocket", json!("/run/a.sock")))
        .range
        .is_some());
}

#[test]
fn example_agent_conflist_has_no_range() {
    let s = example_agent_conflist("weft", "/run/weft/weft.sock", "/var/lib/weft");
    let list: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        list["plugins"][0],
        json!({"type": "weft", "agentSocket": "/run/weft/weft.sock", "dataDir": "/var/lib/weft", "capabilities": {"aliases": true}})
    );
    let (_, c) = parse(&first_plugin(&s)).unwrap();
    assert_eq!(c.range, None);
    assert_eq!(c.agent_socket, "/run/weft/weft.sock");
}

proptest! {
    #[test]
    fn valid_ipv4_ranges_accepted(a in any::<u32>(), prefix in 0u8..=30) {
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), prefix).unwrap().trunc();
        let v = with("range", json!(net.to_string()));
        match NetworkConfig::from_netconf(&conf(v)) {
            Ok(c) => {
                let (first, last) = c.allocation_bounds().unwrap();
                prop_assert!(first < last && net.contains(&first) && net.contains(&last));
            }
            // Only a range that swallows the default gateway may fail.
            Err(e) => {
                prop_assert_eq!(e.field, "gateway");
                prop_assert!(net.contains(&IpAddr::V4(DEFAULT_GATEWAY_V4)));
            }
        }
    }

    #[test]
    fn example_conflist_parses_back(
        name in "[A-Za-z0-9][A-Za-z0-9_.-]{0,20}",
        a in any::<u32>(),
        prefix in 8u8..=30,
        dir in "/[a-z0-9/_-]{0,20}",
    ) {
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), prefix).unwrap().trunc();
        prop_assume!(!net.contains(&IpAddr::V4(DEFAULT_GATEWAY_V4)));
        let s = example_conflist(&name, &net.to_string(), &dir);
        let (_, c) = parse(&first_plugin(&s)).unwrap();
        prop_assert_eq!(c.name, name);
        prop_assert_eq!(c.range, Some(net));
        prop_assert_eq!(c.data_dir, dir);
    }

    #[test]
    fn arbitrary_extra_values_never_panic(
        key in prop_oneof![
            Just("range"), Just("rangeStart"), Just("rangeEnd"), Just("gateway"),
            Just("mtu"), Just("dataDir"), Just("hostVethPrefix"), Just("agentSocket")
        ],
        s in ".{0,40}",
        n in any::<i64>(),
        pick in 0u8..3,
    ) {
        let value = match pick { 0 => json!(s), 1 => json!(n), _ => Value::Null };
        if let Err(e) = NetworkConfig::from_netconf(&conf(with(key, value))) {
            prop_assert!(!e.expected.is_empty());
            let c: CniError = e.into();
            prop_assert_eq!(c.code, code::INVALID_CONFIG);
        }
    }
}
