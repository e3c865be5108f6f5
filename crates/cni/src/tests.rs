use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::from_vars(|k| map.get(k).cloned())
}

const ADD_OK: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/var/run/netns/x"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_ARGS", "K8S_POD_NAME=web;IgnoreUnknown=1"),
    ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
];

fn with(
    base: &[(&'static str, &'static str)],
    k: &'static str,
    v: Option<&'static str>,
) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<_> = base.iter().copied().filter(|(key, _)| *key != k).collect();
    if let Some(v) = v {
        out.push((k, v));
    }
    out
}

// ---- versions ----

#[test]
fn version_strings_round_trip() {
    for v in SUPPORTED {
        assert_eq!(v.as_str().parse::<Version>().unwrap(), *v);
        assert_eq!(v.to_string(), v.as_str());
        let j = serde_json::to_string(v).unwrap();
        assert_eq!(j, format!("\"{}\"", v.as_str()));
        assert_eq!(serde_json::from_str::<Version>(&j).unwrap(), *v);
    }
    assert!(serde_json::from_str::<Version>("\"0.4.0\"").is_err());
    assert!(serde_json::from_str::<Version>("1").is_err());
    assert_eq!(Version::LATEST, Version::V1_1_0);
}

#[test]
fn negotiate_missing_is_code_7() {
    for v in [None, Some("")] {
        let e = negotiate(v).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert_eq!(e.msg, "cniVersion is missing");
    }
}

#[test]
fn negotiate_unsupported_is_code_1_naming_supported() {
    for v in ["0.4.0", "2.0.0", "abc", "1.0", " 1.0.0"] {
        let e = negotiate(Some(v)).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{v}");
        assert!(
            e.msg.contains("1.0.0") && e.msg.contains("1.1.0"),
            "{}",
            e.msg
        );
        assert!(e.msg.contains(v), "{}", e.msg);
    }
}

#[test]
fn negotiate_supported() {
    assert_eq!(negotiate(Some("1.0.0")).unwrap(), Version::V1_0_0);
    assert_eq!(negotiate(Some("1.1.0")).unwrap(), Version::V1_1_0);
}

#[test]
fn version_info_json() {
    let v: Value = serde_json::from_str(&version_info("1.0.0")).unwrap();
    assert_eq!(
        v,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let v: Value = serde_json::from_str(&version_info("")).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    let info: VersionInfo = serde_json::from_str(&version_info("0.4.0")).unwrap();
    assert_eq!(info.cni_version, "0.4.0");
}

// ---- errors ----

#[test]
fn error_json_omits_empty_details() {
    let e = CniError::new(code::INVALID_ENV, "bad \"env\"");
    assert_eq!(
        e.to_json("1.0.0"),
        r#"{"cniVersion":"1.0.0","code":4,"msg":"bad \"env\""}"#
    );
    let e = e.with_details("more");
    assert_eq!(
        e.to_json("1.1.0"),
        r#"{"cniVersion":"1.1.0","code":4,"msg":"bad \"env\"","details":"more"}"#
    );
}

#[test]
fn error_display_and_trait() {
    let e = CniError::new(code::ADDRESS_EXHAUSTED, "no addresses").with_details("10.0.0.0/30");
    assert_eq!(e.to_string(), "CNI error 100: no addresses (10.0.0.0/30)");
    let boxed: Box<dyn std::error::Error> = Box::new(CniError::new(1, "x"));
    assert_eq!(boxed.to_string(), "CNI error 1: x");
}

#[test]
fn error_codes() {
    assert_eq!(
        [
            code::INCOMPATIBLE_VERSION,
            code::UNSUPPORTED_FIELD,
            code::UNKNOWN_CONTAINER,
            code::INVALID_ENV,
            code::IO_FAILURE,
            code::DECODE,
            code::INVALID_CONFIG,
            code::TRY_AGAIN,
            code::NOT_AVAILABLE,
            code::LIMITED_CONNECTIVITY,
            code::ADDRESS_EXHAUSTED,
            code::INTERNAL
        ],
        [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 999]
    );
}

// ---- commands & env ----

#[test]
fn command_parse() {
    for (s, c) in [
        ("ADD", Command::Add),
        ("DEL", Command::Del),
        ("CHECK", Command::Check),
        ("VERSION", Command::Version),
        ("STATUS", Command::Status),
        ("GC", Command::Gc),
    ] {
        assert_eq!(s.parse::<Command>().unwrap(), c);
        assert_eq!(c.as_str(), s);
        assert_eq!(c.to_string(), s);
    }
    for s in ["add", "", "ADD ", "FOO"] {
        assert_eq!(s.parse::<Command>().unwrap_err().code, code::INVALID_ENV);
    }
}

#[test]
fn env_add_ok() {
    let env = env_of(ADD_OK).unwrap();
    assert_eq!(env.command, Command::Add);
    assert_eq!(env.container_id.as_deref(), Some("abc123"));
    assert_eq!(env.netns.as_deref(), Some("/var/run/netns/x"));
    assert_eq!(env.ifname.as_deref(), Some("eth0"));
    assert_eq!(
        env.args,
        vec![
            ("K8S_POD_NAME".to_string(), "web".to_string()),
            ("IgnoreUnknown".to_string(), "1".to_string())
        ]
    );
    assert_eq!(env.arg("K8S_POD_NAME"), Some("web"));
    assert_eq!(env.arg("nope"), None);
    assert_eq!(env.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
}

#[test]
fn env_missing_command() {
    let e = env_of(&[]).unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.msg.contains("CNI_COMMAND"));
    let e = env_of(&[("CNI_COMMAND", "")]).unwrap_err();
    assert!(e.msg.contains("CNI_COMMAND"));
    let e = env_of(&[("CNI_COMMAND", "bogus")]).unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.msg.contains("bogus"));
}

#[test]
fn env_required_vars_for_add_and_check() {
    for cmd in ["ADD", "CHECK"] {
        let base = with(ADD_OK, "CNI_COMMAND", Some(cmd));
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            for missing in [None, Some("")] {
                let e = env_of(&with(&base, var, missing)).unwrap_err();
                assert_eq!(e.code, code::INVALID_ENV);
                assert!(e.msg.contains(var), "{}", e.msg);
                assert!(e.msg.contains("not set"), "{}", e.msg);
            }
        }
        assert!(env_of(&base).is_ok());
    }
}

#[test]
fn env_del_netns_optional() {
    let base = with(ADD_OK, "CNI_COMMAND", Some("DEL"));
    let env = env_of(&with(&base, "CNI_NETNS", None)).unwrap();
    assert_eq!(env.netns, None);
    let env = env_of(&with(&base, "CNI_NETNS", Some(""))).unwrap();
    assert_eq!(env.netns, None);
    let env = env_of(&base).unwrap();
    assert_eq!(env.netns.as_deref(), Some("/var/run/netns/x"));
    let e = env_of(&with(&base, "CNI_NETNS", Some("relative"))).unwrap_err();
    assert!(e.msg.contains("CNI_NETNS"));
    for var in ["CNI_CONTAINERID", "CNI_IFNAME"] {
        let e = env_of(&with(&base, var, None)).unwrap_err();
        assert!(e.msg.contains(var));
    }
}

#[test]
fn env_version_status_gc_need_nothing() {
    for cmd in ["VERSION", "STATUS", "GC"] {
        let env = env_of(&[("CNI_COMMAND", cmd)]).unwrap();
        assert_eq!(env.command.as_str(), cmd);
        assert_eq!(env.container_id, None);
        assert!(env.args.is_empty() && env.path.is_empty());
        // Unused garbage is ignored for these commands.
        let env = env_of(&[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "way/too/long/interface"),
        ])
        .unwrap();
        assert_eq!(env.ifname, None);
    }
    // VERSION ignores a malformed CNI_ARGS; GC does not.
    assert!(env_of(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "junk")]).is_ok());
    assert!(env_of(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "junk")]).is_err());
    let env = env_of(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/a:/b")]).unwrap();
    assert_eq!(env.path, vec!["/a", "/b"]);
}

#[test]
fn container_id_validation() {
    for ok in ["a", "0", "abc-DEF_1.2", "f00d"] {
        assert!(is_valid_container_id(ok), "{ok}");
        assert!(env_of(&with(ADD_OK, "CNI_CONTAINERID", Some(ok))).is_ok());
    }
    for bad in ["-a", "_a", ".a", "a b", "a/b", "ä", "a:b"] {
        assert!(!is_valid_container_id(bad), "{bad}");
        let e = env_of(&with(ADD_OK, "CNI_CONTAINERID", Some(bad))).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID") && e.msg.contains("expected"));
    }
    assert!(!is_valid_container_id(""));
}

#[test]
fn ifname_validation() {
    for ok in ["eth0", "a", "123456789012345", "net-1.2_x", "..."] {
        assert!(is_valid_ifname(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "1234567890123456",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "a\0",
    ] {
        assert!(!is_valid_ifname(bad), "{bad:?}");
    }
    let e = env_of(&with(ADD_OK, "CNI_IFNAME", Some("eth:0"))).unwrap_err();
    assert!(e.msg.contains("CNI_IFNAME") && e.msg.contains("15"));
}

#[test]
fn cni_args_parsing() {
    assert_eq!(parse_cni_args("").unwrap(), vec![]);
    assert_eq!(
        parse_cni_args("A=1;B=;C=x=y;").unwrap(),
        vec![
            ("A".into(), "1".into()),
            ("B".into(), "".into()),
            ("C".into(), "x=y".into())
        ]
    );
    for bad in ["A", "=1", "A=1;B", "A B=1"] {
        let e = parse_cni_args(bad).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_ARGS"));
    }
    let e = env_of(&with(ADD_OK, "CNI_ARGS", Some("foo"))).unwrap_err();
    assert!(e.msg.contains("CNI_ARGS"));
}

// ---- NetConf ----

#[test]
fn netconf_parse_full() {
    let conf = NetConf::parse(
        br#"{
        "cniVersion": "1.1.0",
        "name": "weftnet",
        "type": "weft",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": []},
        "prevResult": {"cniVersion": "1.1.0"},
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        "range": "10.32.1.0/24",
        "mtu": 1400
    }"#,
    )
    .unwrap();
    assert_eq!(conf.cni_version.as_deref(), Some("1.1.0"));
    assert_eq!(conf.name.as_deref(), Some("weftnet"));
    assert_eq!(conf.plugin_type.as_deref(), Some("weft"));
    assert_eq!(conf.capabilities.as_ref().unwrap()["portMappings"], true);
    assert!(conf.runtime_config.is_some());
    assert!(conf.prev_result.is_some());
    assert_eq!(
        conf.valid_attachments,
        Some(vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }])
    );
    assert_eq!(conf.extra.len(), 2);
    assert_eq!(conf.extra["range"], "10.32.1.0/24");
    assert_eq!(conf.extra["mtu"], 1400);

    // Serialization round-trips.
    let back = NetConf::parse(serde_json::to_string(&conf).unwrap().as_bytes()).unwrap();
    assert_eq!(back, conf);
}

#[test]
fn netconf_parse_minimal() {
    let conf = NetConf::parse(b"{}").unwrap();
    assert_eq!(conf, NetConf::default());
    assert_eq!(serde_json::to_string(&conf).unwrap(), "{}");
}

#[test]
fn netconf_parse_errors_are_code_6_with_position() {
    for bad in [
        &b"{\n  \"name\": \"x\",\n  oops\n}"[..],
        b"[1,2]",
        b"42",
        b"",
        b"{\"cniVersion\": 1}",
        b"{\"cni.dev/valid-attachments\": [{\"ifname\": \"eth0\"}]}",
    ] {
        let e = NetConf::parse(bad).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(
            e.msg.contains("line") && e.msg.contains("column"),
            "{}",
            e.msg
        );
    }
    let e = NetConf::parse(b"{\n  \"name\": \"x\",\n  oops\n}").unwrap_err();
    assert!(e.msg.contains("line 3"), "{}", e.msg);
}

// ---- results ----

fn sample_result() -> CniResult {
    CniResult {
        cni_version: "1.1.0".into(),
        interfaces: vec![
            Interface {
                name: "weft1234".into(),
                mac: Some("aa:bb:cc:dd:ee:ff".into()),
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("11:22:33:44:55:66".into()),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/x".into()),
                socket_path: None,
                pci_id: None,
            },
        ],
        ips: vec![IpConfig {
            address: "10.32.1.5/24".parse().unwrap(),
            gateway: Some("169.254.1.1".parse().unwrap()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("169.254.1.1".parse().unwrap()),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }],
        dns: Dns::default(),
    }
}

#[test]
fn result_json_shape() {
    let v: Value = serde_json::from_str(&sample_result().to_json_string()).unwrap();
    assert_eq!(
        v,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "weft1234", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "mtu": 1450, "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"address": "10.32.1.5/24", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
        })
    );
    assert_eq!(
        CniResult::new(Version::V1_0_0).to_json_string(),
        r#"{"cniVersion":"1.0.0"}"#
    );
}

#[test]
fn result_all_fields_named_per_spec() {
    let r = CniResult {
        cni_version: "1.1.0".into(),
        interfaces: vec![Interface {
            name: "x".into(),
            socket_path: Some("/s".into()),
            pci_id: Some("0000:00:01.0".into()),
            ..Default::default()
        }],
        ips: vec![],
        routes: vec![Route {
            dst: "fd00::/8".parse().unwrap(),
            gw: None,
            mtu: Some(1400),
            advmss: Some(1360),
            priority: Some(10),
            table: Some(100),
            scope: Some(253),
        }],
        dns: Dns {
            nameservers: vec!["10.0.0.10".into()],
            domain: Some("cluster.local".into()),
            search: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        },
    };
    let v: Value = serde_json::from_str(&r.to_json_string()).unwrap();
    assert_eq!(v["interfaces"][0]["socketPath"], "/s");
    assert_eq!(v["interfaces"][0]["pciID"], "0000:00:01.0");
    assert_eq!(
        v["routes"][0],
        json!({"dst": "fd00::/8", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 253})
    );
    assert_eq!(v["dns"]["domain"], "cluster.local");
    assert_eq!(v["dns"]["options"][0], "ndots:5");
    assert!(v.get("ips").is_none());
}

#[test]
fn parse_prev_ok() {
    let v: Value = serde_json::from_str(&sample_result().to_json_string()).unwrap();
    assert_eq!(CniResult::parse_prev(&v).unwrap(), sample_result());
    // Unknown keys (e.g. 0.4.0's "version" in ips) are ignored.
    let v = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "version": "4"}]});
    let r = CniResult::parse_prev(&v).unwrap();
    assert_eq!(r.ips[0].interface, None);
}

#[test]
fn parse_prev_errors() {
    let cases = [
        (json!("nope"), code::INVALID_CONFIG),
        (json!({}), code::INVALID_CONFIG),
        (json!({"cniVersion": 1}), code::INVALID_CONFIG),
        (json!({"cniVersion": "0.4.0"}), code::INVALID_CONFIG),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 0}]}),
            code::INVALID_CONFIG,
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}),
            code::DECODE,
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": {}}),
            code::DECODE,
        ),
        (
            json!({"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]}),
            code::DECODE,
        ),
    ];
    for (v, c) in cases {
        assert_eq!(CniResult::parse_prev(&v).unwrap_err().code, c, "{v}");
    }
}

#[test]
fn append_rebases_interface_indices() {
    let mut a = sample_result();
    let mut b = sample_result();
    b.ips.push(IpConfig {
        address: "fd00::5/64".parse().unwrap(),
        gateway: None,
        interface: None,
    });
    b.dns.nameservers = vec!["1.1.1.1".into()];
    b.dns.domain = Some("d".into());
    a.dns.nameservers = vec!["1.1.1.1".into()];
    a.append(b);
    assert_eq!(a.interfaces.len(), 4);
    assert_eq!(a.interfaces[3].name, "eth0");
    assert_eq!(
        a.ips.iter().map(|i| i.interface).collect::<Vec<_>>(),
        vec![Some(1), Some(3), None]
    );
    assert_eq!(a.routes.len(), 2);
    assert_eq!(a.dns.nameservers, vec!["1.1.1.1"]);
    assert_eq!(a.dns.domain.as_deref(), Some("d"));
    assert_eq!(a.cni_version, "1.1.0");
    // The combined result is still a valid prevResult.
    let v: Value = serde_json::from_str(&a.to_json_string()).unwrap();
    assert_eq!(CniResult::parse_prev(&v).unwrap(), a);
}

#[test]
fn append_to_empty() {
    let mut a = CniResult::new(Version::V1_0_0);
    a.append(sample_result());
    assert_eq!(a.ips[0].interface, Some(1));
    assert_eq!(a.cni_version, "1.0.0");
}

// ---- property tests ----

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    (arb_ip(), any::<u8>()).prop_map(|(ip, p)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, p % (max + 1)).unwrap()
    })
}

fn arb_opt_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9:/\"\\\\ ]{0,12}")
}

fn arb_result() -> impl Strategy<Value = CniResult> {
    let iface = (
        "[a-z0-9]{1,15}",
        arb_opt_string(),
        proptest::option::of(any::<u32>()),
        arb_opt_string(),
        arb_opt_string(),
        arb_opt_string(),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
        });
    let ip = (
        arb_net(),
        proptest::option::of(arb_ip()),
        proptest::option::of(0usize..8),
    )
        .prop_map(|(address, gateway, interface)| IpConfig {
            address,
            gateway,
            interface,
        });
    let route = (
        arb_net(),
        proptest::option::of(arb_ip()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, mtu, advmss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        });
    let strs = proptest::collection::vec("[a-z0-9.: ]{0,10}", 0..3);
    let dns = (strs.clone(), arb_opt_string(), strs.clone(), strs).prop_map(
        |(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        },
    );
    (
        prop_oneof![Just("1.0.0".to_string()), Just("1.1.0".to_string())],
        proptest::collection::vec(iface, 0..4),
        proptest::collection::vec(ip, 0..4),
        proptest::collection::vec(route, 0..4),
        dns,
    )
        .prop_map(|(cni_version, interfaces, ips, routes, dns)| CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
        })
}

proptest! {
    #[test]
    fn result_json_round_trips(r in arb_result()) {
        let s = r.to_json_string();
        let back: CniResult = serde_json::from_str(&s).unwrap();
        prop_assert_eq!(&back, &r);
    }

    #[test]
    fn append_shifts_every_index(a in arb_result(), b in arb_result()) {
        let mut merged = a.clone();
        merged.append(b.clone());
        prop_assert_eq!(merged.interfaces.len(), a.interfaces.len() + b.interfaces.len());
        prop_assert_eq!(merged.ips.len(), a.ips.len() + b.ips.len());
        for (got, orig) in merged.ips[a.ips.len()..].iter().zip(&b.ips) {
            prop_assert_eq!(got.interface, orig.interface.map(|i| i + a.interfaces.len()));
        }
    }

    #[test]
    fn env_parsing_never_panics(
        cmd in proptest::option::of(prop_oneof![
            Just("ADD".to_string()), Just("DEL".to_string()), Just("CHECK".to_string()),
            Just("VERSION".to_string()), Just("GC".to_string()), ".{0,8}"
        ]),
        cid in proptest::option::of(".{0,20}"),
        netns in proptest::option::of(".{0,20}"),
        ifname in proptest::option::of(".{0,20}"),
        args in proptest::option::of(".{0,30}"),
        path in proptest::option::of(".{0,30}"),
    ) {
        let get = |k: &str| match k {
            "CNI_COMMAND" => cmd.clone(),
            "CNI_CONTAINERID" => cid.clone(),
            "CNI_NETNS" => netns.clone(),
            "CNI_IFNAME" => ifname.clone(),
            "CNI_ARGS" => args.clone(),
            "CNI_PATH" => path.clone(),
            _ => None,
        };
        match Env::from_vars(get) {
            Ok(env) => {
                if let Some(id) = &env.container_id { prop_assert!(is_valid_container_id(id)); }
                if let Some(n) = &env.ifname { prop_assert!(is_valid_ifname(n)); }
                if matches!(env.command, Command::Add | Command::Check) {
                    prop_assert!(env.netns.is_some() && env.ifname.is_some());
                }
            }
            Err(e) => prop_assert_eq!(e.code, code::INVALID_ENV),
        }
    }

    #[test]
    fn netconf_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert_eq!(e.code, code::DECODE);
        }
    }
}
