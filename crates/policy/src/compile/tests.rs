use super::*;
use crate::engine::{verdict, Flow};
use crate::gen;
use crate::k8s::{parse_objects, Object};
use crate::ranges::addr_num;
use proptest::prelude::*;
use std::net::IpAddr;

/// A reader of exactly the rule shapes the compiler writes: evaluates the compiled table
/// for one packet as the kernel would (the `egress` base chain, then `ingress`; a new
/// connection, so no conntrack state applies).
struct Eval<'a> {
    c: &'a Compiled,
}

#[derive(Debug, PartialEq)]
enum Res {
    Accept,
    Drop,
    Continue,
}

fn parse_addr_elem(e: &str) -> (u128, u128) {
    if let Some((a, b)) = e.split_once('-') {
        let a: IpAddr = a.parse().unwrap();
        let b: IpAddr = b.parse().unwrap();
        (addr_num(a), addr_num(b))
    } else if e.contains('/') {
        cidr_span(&e.parse().unwrap())
    } else {
        let a: IpAddr = e.parse().unwrap();
        (addr_num(a), addr_num(a))
    }
}

impl Eval<'_> {
    fn in_addr_set(&self, set: &str, a: IpAddr) -> bool {
        let n = addr_num(a);
        self.c.sets[set].elements.iter().any(|e| {
            let (lo, hi) = parse_addr_elem(e);
            lo <= n && n <= hi
        })
    }

    fn in_pp_set(&self, set: &str, f: &Flow) -> bool {
        let Some(proto) = crate::k8s::Protocol::from_number(f.proto) else {
            return false;
        };
        self.c.sets[set].elements.iter().any(|e| {
            let (p, range) = e.split_once(" . ").unwrap();
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()),
                None => (range.parse().unwrap(), range.parse().unwrap()),
            };
            p == proto.nft() && lo <= f.port && f.port <= hi
        })
    }

    fn in_named_set(&self, set: &str, f: &Flow) -> bool {
        let Some(proto) = crate::k8s::Protocol::from_number(f.proto) else {
            return false;
        };
        let want = format!("{} . {} . {}", f.dst, proto.nft(), f.port);
        self.c.sets[set].elements.contains(&want)
    }

    fn chain(&self, name: &str, f: &Flow) -> Res {
        for rule in &self.c.chains[name] {
            if let Some(target) = rule.strip_prefix("jump ") {
                match self.chain(target, f) {
                    Res::Continue => continue,
                    r => return r,
                }
            }
            if rule.starts_with("limit rate") {
                continue;
            }
            if rule.starts_with("counter name") {
                assert!(rule.ends_with(" drop"), "{rule}");
                return Res::Drop;
            }
            assert!(
                rule == "accept" || rule.ends_with(" accept"),
                "unexpected rule {rule}"
            );
            let head = rule.split("log prefix").next().unwrap().trim_end();
            let head = head.strip_suffix("accept").unwrap_or(head);
            let toks: Vec<&str> = head.split_whitespace().collect();
            let mut i = 0;
            let mut ok = true;
            while i < toks.len() {
                match toks[i] {
                    fam @ ("ip" | "ip6") => {
                        let fam_ok = (fam == "ip6") == f.src.is_ipv6();
                        if toks[i + 1] == "saddr" && toks.get(i + 2) == Some(&".") {
                            // ip saddr . ip daddr @self4: `A . A` for every isolated A.
                            let set = toks[i + 5].trim_start_matches('@');
                            assert_eq!(set, self_name(fam == "ip6"), "{rule}");
                            ok &= fam_ok && f.src == f.dst && self.c.isolated.contains(&f.src);
                            i += 6;
                        } else if toks[i + 1] == "daddr" && toks.get(i + 2) == Some(&".") {
                            // ip daddr . meta l4proto . th dport @set
                            let set = toks[i + 8].trim_start_matches('@');
                            ok &= fam_ok && self.in_named_set(set, f);
                            i += 9;
                        } else {
                            let a = if toks[i + 1] == "saddr" { f.src } else { f.dst };
                            let set = toks[i + 2].trim_start_matches('@');
                            ok &= fam_ok && self.in_addr_set(set, a);
                            i += 3;
                        }
                    }
                    "meta" => {
                        // meta l4proto . th dport @set
                        let set = toks[i + 5].trim_start_matches('@');
                        ok &= self.in_pp_set(set, f);
                        i += 6;
                    }
                    t => panic!("unexpected token {t} in {rule}"),
                }
            }
            if ok {
                return Res::Accept;
            }
        }
        Res::Continue
    }

    fn allows(&self, f: &Flow) -> bool {
        let v6 = f.src.is_ipv6();
        for (dir, a) in [(Dir::Egress, f.src), (Dir::Ingress, f.dst)] {
            if let Some(g) = self.c.dispatch.get(&(dir, v6)).and_then(|m| m.get(&a)) {
                if self.chain(g, f) == Res::Drop {
                    return false;
                }
            }
        }
        true
    }
}

fn addrs(ns: &str, pod: &str) -> Vec<IpAddr> {
    let i = gen::NAMESPACES.iter().position(|n| *n == ns).unwrap();
    let j = gen::PODS.iter().position(|p| *p == pod).unwrap();
    vec![
        format!("10.32.{}.{}", i, 2 + j).parse().unwrap(),
        format!("fd32::{}:{}", i, 2 + j).parse().unwrap(),
    ]
}

fn all_addrs() -> Vec<IpAddr> {
    let mut v = Vec::new();
    for ns in gen::NAMESPACES {
        for p in gen::PODS {
            v.extend(addrs(ns, p));
        }
    }
    v
}

fn world_of(yaml: &str) -> World {
    if yaml.is_empty() {
        return gen::truth_world(addrs, vec![]);
    }
    let pols = parse_objects(yaml, "x")
        .unwrap()
        .into_iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    gen::truth_world(addrs, pols)
}

/// Every pair of pods and a few outside addresses, both families, TCP/UDP/SCTP on 80,
/// 81 and 82, and ICMP: the compiled rules (every endpoint local) decide as the engine.
fn check_against_engine(w: &World, what: &str) {
    let c = compile(w, |_| true);
    let ev = Eval { c: &c };
    let mut srcs = all_addrs();
    srcs.push("192.168.9.9".parse().unwrap());
    srcs.push("fd99::9".parse().unwrap());
    for &s in &srcs {
        for &d in &srcs {
            if s.is_ipv6() != d.is_ipv6() {
                continue;
            }
            for (proto, ports) in [
                (6u8, &[80u16, 81, 82][..]),
                (17, &[80, 81, 82]),
                (132, &[80, 81]),
                (if s.is_ipv6() { 58 } else { 1 }, &[0]),
            ] {
                for &port in ports {
                    let f = Flow {
                        src: s,
                        dst: d,
                        proto,
                        port,
                    };
                    let want = verdict(w, &f);
                    assert_eq!(
                        ev.allows(&f),
                        want.allowed,
                        "{what}: {s} -> {d} proto {proto} port {port}: engine says {}\n{:#?}",
                        want.explain(w, &f),
                        c
                    );
                }
            }
        }
    }
}

#[test]
fn no_policy_compiles_to_nothing() {
    let c = compile(&world_of(""), |_| true);
    assert!(c.isolated.is_empty() && c.chains.is_empty() && c.sets.is_empty());
}

#[test]
fn each_rule_shape_compiles_to_what_the_engine_decides() {
    let head = |name: &str, ns: &str| {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n")
    };
    let cases = [
        "  podSelector: {}\n",
        "  podSelector: {}\n  ingress: [{}]\n",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.32.0.0/16, except: [10.32.1.0/24]}\n    - ipBlock: {cidr: 10.32.1.3/32}\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 'fd32::/64', except: ['fd32::1:2/128']}\n",
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      protocol: UDP\n    - port: 80\n      endPort: 81\n    - protocol: SCTP\n",
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: serve-81-tcp\n    - port: serve-80-udp\n      protocol: UDP\n",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n    ports:\n    - port: serve-80-tcp\n",
        "  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: z}}\n    ports:\n    - port: serve-81-udp\n      protocol: UDP\n",
        "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 0.0.0.0/0, except: [10.32.2.2/32]}\n    ports:\n    - port: serve-80-tcp\n  policyTypes: [Egress]\n",
        "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}\n  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}\n  egress:\n  - {}\n",
    ];
    for (i, spec) in cases.iter().enumerate() {
        let yaml = format!("{}{spec}", head(&format!("p{i}"), "x"));
        check_against_engine(&world_of(&yaml), &yaml);
    }
    // All of them at once: unions across policies.
    let all: String = cases
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}{s}", head(&format!("p{i}"), gen::NAMESPACES[i % 3])))
        .collect();
    check_against_engine(&world_of(&all), "all cases");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Generated policies (the truth table's generator): the compiled table agrees with
    /// the engine on every probe.
    #[test]
    fn generated_policies_compile_to_what_the_engine_decides(seed in 0u64..1_000_000) {
        let yaml = gen::policies(seed, 1 + (seed % 4) as usize, &all_addrs());
        check_against_engine(&world_of(&yaml), &yaml);
    }
}

#[test]
fn endpoints_with_the_same_policies_share_a_group_and_only_local_ones_are_compiled() {
    let w = world_of("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: x\nspec:\n  podSelector: {}\n");
    let c = compile(&w, |e| e.namespace == "x" && e.name != "c");
    let groups: BTreeSet<&String> = c.dispatch.values().flat_map(|m| m.values()).collect();
    assert_eq!(groups.len(), 1);
    // x/a and x/b, both families.
    assert_eq!(c.isolated.len(), 4);
    let none = compile(&w, |e| e.namespace == "y");
    assert!(none.isolated.is_empty());
}

#[test]
fn diff_scripts_touch_only_what_changed_and_clean_up_after_themselves() {
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: x\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n";
    let w1 = world_of(deny);
    let c1 = compile(&w1, |_| true);
    assert_eq!(diff_script(&c1, &c1), "");
    // A new pod in namespace x: its address enters the dispatch and the peer set only.
    let mut w2 = w1.clone();
    w2.add_endpoint(Endpoint {
        uid: "x-d/eth0".into(),
        namespace: "x".into(),
        name: "d".into(),
        labels: gen::pod_labels("b"),
        ports: vec![],
        addrs: vec!["10.32.0.9".parse().unwrap()],
        node: String::new(),
    });
    let c2 = compile(&w2, |_| true);
    let d = diff_script(&c1, &c2);
    // Changed sets and maps are emptied and declared again with their elements inline.
    let line = |d: &str, head: &str| -> String {
        d.lines()
            .find(|l| l.starts_with(head))
            .unwrap_or_else(|| panic!("no line {head}: {d}"))
            .to_string()
    };
    assert!(d.contains("flush map inet weft_policy in4\n"), "{d}");
    let in4 = line(
        &d,
        "add map inet weft_policy in4 { type ipv4_addr : verdict; elements = {",
    );
    assert!(in4.contains("10.32.0.9 : jump g_"), "{in4}");
    // The held set follows the dispatch map's keys.
    assert!(d.contains("flush set inet weft_policy in4_held\n"), "{d}");
    let held = line(
        &d,
        "add set inet weft_policy in4_held { type ipv4_addr; elements = {",
    );
    assert!(held.contains("10.32.0.9"), "{held}");
    assert!(!d.contains("in6"), "{d}");
    let iso4 = line(
        &d,
        "add set inet weft_policy iso4 { type ipv4_addr; elements = {",
    );
    assert!(iso4.contains("10.32.0.9"), "{iso4}");
    let weft = line(
        &d,
        "add set ip weft isolated { type ipv4_addr; elements = {",
    );
    assert!(weft.contains("10.32.0.9"), "{weft}");
    assert!(
        d.find("flush set ip weft isolated").unwrap() < d.find(&weft).unwrap(),
        "{d}"
    );
    assert!(d.contains("flush set inet weft_policy p_"), "{d}");
    assert!(!d.contains("add chain"), "{d}");
    // Back to no policy: every chain and set goes, after being emptied.
    let c0 = compile(&world_of(""), |_| true);
    let d = diff_script(&c2, &c0);
    let flush = d.find("flush chain").unwrap();
    let delete = d.find("delete chain").unwrap();
    assert!(flush < delete);
    assert!(d.contains("flush set ip weft isolated\n"), "{d}");
    assert!(!d.contains("add set ip weft isolated"), "{d}");
    // Elements are never added or deleted on their own (`nft` would read the whole
    // ruleset first).
    for script in [diff_script(&c1, &c2), d.clone(), full_script(&c2)] {
        assert!(!script.contains(" element "), "{script}");
    }
    for name in c2.chains.keys() {
        assert!(
            d.contains(&format!("delete chain inet weft_policy {name}\n")),
            "{d}"
        );
    }
    for name in c2.sets.keys() {
        assert!(
            d.contains(&format!("delete set inet weft_policy {name}\n")),
            "{d}"
        );
    }
}

#[test]
fn the_full_script_replaces_the_table_in_one_go() {
    let w = world_of("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: x\nspec:\n  podSelector: {}\n");
    let s = full_script(&compile(&w, |_| true));
    assert!(s.starts_with("table inet weft_policy\ndelete table inet weft_policy\n"));
    assert!(s.contains("type filter hook forward priority filter - 1; policy accept;"));
    assert!(s.contains("ct state established,related ct mark & 0x02000000 == 0 accept"));
    // The pickup rule tests the state first and looks the isolated set up last.
    assert!(s.contains(
        "ct state new meta l4proto tcp tcp flags & (syn | ack) != syn ip saddr @iso4 ct mark set ct mark | 0x02000000"
    ));
    assert!(s.contains("flush set ip weft isolated"));
    assert!(s.contains("counter name \"drop_in\" drop"));
    // An address isolated but not dispatched yet is dropped, after the dispatch.
    let ingress = &s[s.find("chain ingress {").unwrap()..];
    let vmap = ingress.find("ip6 daddr vmap @in6").unwrap();
    let held = ingress.find("ip6 daddr @in6_held goto held_in").unwrap();
    assert!(vmap < held, "{ingress}");
    assert!(s.contains("ip saddr @out4_held goto held_out"));
    assert!(s.contains("chain held_out {"));
    // Allowed connections are logged once each, after both directions passed, by a
    // chain of their own: the allow rules themselves log nothing.
    assert!(s.contains(
        "type filter hook forward priority filter + 1; policy accept;\n    ct state new ct mark & 0x04000000 == 0 limit rate 1000/second burst 100 packets goto allowed_new"
    ), "{s}");
    assert!(s.contains(
        "ip6 daddr @iso6 ct mark set ct mark | 0x04000000 log prefix \"weft A\" group 7 accept"
    ));
    assert_eq!(s.matches("log prefix \"weft A").count(), 4, "{s}");
    // Established TCP connections of isolated pods nobody translates, not picked up
    // mid-stream, are logged once more, for the agent to promote to the fast path.
    assert!(s.contains(
        "ct status assured ct mark & 0x0a000000 == 0 ct direction original ct status ! snat,dnat meta l4proto tcp goto promote"
    ), "{s}");
    assert!(s.contains(
        "chain promote {\n    ip saddr @iso4 goto promote_log\n    ip daddr @iso4 goto promote_log\n    ip6 saddr @iso6 goto promote_log\n    ip6 daddr @iso6 goto promote_log\n    ct mark set ct mark | 0x08000000\n  }"
    ), "{s}");
    assert!(s.contains(
        "limit rate 1000/second burst 100 packets ct mark set ct mark | 0x08000000 log prefix \"weft E\" group 7"
    ));
    assert_eq!(s.matches("log prefix \"weft E").count(), 1, "{s}");
}

#[test]
fn dump_scripts_for_manual_check() {
    if let Ok(dir) = std::env::var("WEFT_DUMP_NFT") {
        let yaml = gen::policies(7, 4, &all_addrs());
        let w = world_of(&yaml);
        let c = compile(&w, |_| true);
        std::fs::write(format!("{dir}/full.nft"), full_script(&c)).unwrap();
        let yaml2 = gen::policies(8, 4, &all_addrs());
        let c2 = compile(&world_of(&yaml2), |_| true);
        std::fs::write(format!("{dir}/diff.nft"), diff_script(&c, &c2)).unwrap();
        std::fs::write(format!("{dir}/full2.nft"), full_script(&c2)).unwrap();
        std::fs::write(format!("{dir}/remove.nft"), remove_script(true)).unwrap();
    }
}

#[test]
fn a_new_endpoint_joins_an_existing_group_at_once_and_the_whole_compile_agrees() {
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: x\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let w1 = world_of(deny);
    let mut applied = compile(&w1, |_| true);
    let e = Endpoint {
        uid: "x-d/eth0".into(),
        namespace: "x".into(),
        name: "d".into(),
        labels: gen::pod_labels("d"),
        ports: vec![],
        addrs: vec!["10.32.0.9".parse().unwrap(), "fd32::9".parse().unwrap()],
        node: String::new(),
    };
    let mut w2 = w1.clone();
    w2.add_endpoint(e.clone());
    let before = applied.clone();
    let q = isolate_one(&mut applied, &mut Groups::default(), &w2, &e).expect("its group exists");
    // Twice changes nothing (the elements are there).
    assert_eq!(
        isolate_one(&mut applied.clone(), &mut Groups::default(), &w2, &e),
        Some(Quick::default())
    );
    // Before the answer, plain elements only (no jump: no check of the whole table's
    // jump graph); the held sets drop it in both directions until the dispatch.
    assert!(q.isolate.iter().all(|o| o.jump.is_none()), "{q:?}");
    let s = elements_script(&q.isolate);
    for line in [
        "add element ip6 weft isolated { fd32::9 }",
        "add element inet weft_policy in4_held { 10.32.0.9 }",
        "add element inet weft_policy out6_held { fd32::9 }",
        "add element inet weft_policy iso4 { 10.32.0.9 }",
    ] {
        assert!(s.contains(line), "{line} in {s}");
    }
    let d = elements_script(&q.dispatch);
    assert!(
        d.contains("add element inet weft_policy in4 { 10.32.0.9 : jump g_"),
        "{d}"
    );
    assert!(
        d.contains("add element inet weft_policy out6 { fd32::9 : jump g_"),
        "{d}"
    );
    assert_eq!(q.dispatch.len(), 4, "{d}");
    // Between the two, the endpoint is held: isolated, dispatched nowhere.
    let mut sim = Sim::of(&before);
    sim.apply(&q.isolate);
    assert!(sim.c.isolated.contains(&e.addrs[0]));
    assert!(sim.held.contains(&(Dir::Ingress, e.addrs[0])));
    assert!(!sim.c.dispatch.values().any(|m| m.contains_key(&e.addrs[0])));
    sim.apply(&q.dispatch);
    assert_eq!(sim.c.dispatch, applied.dispatch);
    sim.check();
    // What the quick step did is what the whole compile wants: nothing left for isolation.
    let full = compile(&w2, |_| true);
    assert_eq!(applied.isolated, full.isolated);
    assert_eq!(applied.dispatch, full.dispatch);
    // An endpoint in a namespace without policy needs nothing; one needing a new group
    // needs the whole compile. The groups of kinds are remembered for one policy map
    // only: the same kind under another map (a policy added) is looked at again.
    let mut y = e.clone();
    y.namespace = "y".into();
    let mut kinds = Groups::default();
    assert_eq!(
        isolate_one(&mut applied, &mut kinds, &w2, &y),
        Some(Quick::default())
    );
    let w3 = world_of(&format!("{deny}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: e\n  namespace: y\nspec:\n  podSelector: {{}}\n"));
    assert_eq!(isolate_one(&mut applied, &mut kinds, &w3, &y), None);
    let mut w4 = w3.clone();
    w4.add_endpoint(y.clone());
    let in_y = kinds
        .of(&w4, &y, Dir::Ingress)
        .cloned()
        .expect("e isolates y");
    assert_eq!(in_y.1, vec!["y/e".to_string()]);
    assert!(kinds.of(&w4, &y, Dir::Egress).is_none());
}

/// The kernel's elements of isolation and dispatch, simulated: a delete of an element
/// that is not there fails, and so does an add of one that is, as the kernel refuses them.
struct Sim {
    c: Compiled,
    /// The held sets: (direction, address).
    held: BTreeSet<(Dir, IpAddr)>,
}

impl Sim {
    fn of(c: &Compiled) -> Sim {
        let held = c
            .dispatch
            .iter()
            .flat_map(|((dir, _), m)| m.keys().map(|a| (*dir, *a)))
            .collect();
        Sim { c: c.clone(), held }
    }

    fn apply(&mut self, ops: &[ElementOp]) {
        apply_ops(&mut self.c, &mut self.held, ops);
    }

    /// Once all is applied, the held sets are the dispatch maps' keys.
    fn check(&self) {
        assert_eq!(self.held, Sim::of(&self.c).held);
    }
}

fn apply_ops(c: &mut Compiled, held: &mut BTreeSet<(Dir, IpAddr)>, ops: &[ElementOp]) {
    for op in ops {
        let (a, v6) = (op.key, op.key.is_ipv6());
        match (op.table, op.set.as_str()) {
            ("weft_policy", set) if set.ends_with("_held") => {
                let dir = if set.starts_with("in") {
                    Dir::Ingress
                } else {
                    Dir::Egress
                };
                assert_eq!(set.starts_with("in6") || set.starts_with("out6"), v6);
                if op.delete {
                    assert!(
                        held.remove(&(dir, a)),
                        "{a} deleted from {set} but not there"
                    );
                } else {
                    assert!(held.insert((dir, a)), "{a} added to {set} twice");
                }
            }
            ("weft_policy", "iso4" | "iso6") => {
                assert_eq!(op.set == "iso6", v6);
                if op.delete {
                    assert!(c.isolated.remove(&a), "{a} deleted but not there");
                } else {
                    c.isolated.insert(a);
                }
            }
            ("weft", ISOLATED_SET) => {}
            ("weft_policy", "self4" | "self6") => {
                // Follows iso4/iso6, whose changes come in the same ops.
                assert!(op.pair && (op.set == "self6") == v6, "{op:?}");
            }
            ("weft_policy", map) => {
                let dir = if map.starts_with("in") {
                    Dir::Ingress
                } else {
                    Dir::Egress
                };
                assert_eq!(map.ends_with('6'), v6);
                let m = c.dispatch.entry((dir, v6)).or_default();
                if op.delete {
                    assert!(
                        m.remove(&a).is_some(),
                        "{a} deleted from {map} but not there"
                    );
                } else {
                    let g = op.jump.clone().expect("a verdict map element jumps");
                    assert!(m.insert(a, g).is_none(), "{a} added to {map} twice");
                }
            }
            other => panic!("unexpected set {other:?}"),
        }
    }
    c.dispatch.retain(|_, m| !m.is_empty());
}

#[test]
fn endpoints_coming_and_going_are_element_changes_and_policy_changes_are_not() {
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: x\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let ingress_only = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: i\n  namespace: x\nspec:\n  podSelector: {matchLabels: {pod: e}}\n";
    let pod = |name: &str, ns: &str, last: u8| Endpoint {
        uid: format!("t-{ns}-{name}/eth0"),
        namespace: ns.into(),
        name: name.into(),
        labels: gen::pod_labels(name),
        ports: vec![],
        addrs: vec![
            format!("10.99.0.{last}").parse().unwrap(),
            format!("fd99::{last}").parse().unwrap(),
        ],
        node: String::new(),
    };
    let base = world_of(&format!("{deny}{ingress_only}"));
    let mut w1 = base.clone();
    w1.add_endpoint(pod("a", "x", 1));
    w1.add_endpoint(pod("b", "y", 2));
    w1.add_endpoint(pod("e", "x", 5));
    let c1 = compile(&w1, |_| true);
    // A pod comes (isolated), one goes, one in a namespace without policy comes.
    let mut w2 = base.clone();
    w2.add_endpoint(pod("c", "x", 3));
    w2.add_endpoint(pod("b", "y", 2));
    w2.add_endpoint(pod("d", "y", 4));
    w2.add_endpoint(pod("e", "x", 5));
    let c2 = compile(&w2, |_| true);
    let ops = diff_elements(&c1, &c2).expect("only elements differ");
    let mut sim = Sim::of(&c1);
    sim.apply(&ops);
    sim.check();
    assert_eq!(sim.c.isolated, c2.isolated);
    assert_eq!(sim.c.dispatch, c2.dispatch);
    assert!(ops.iter().any(|o| o.delete) && ops.iter().any(|o| !o.delete));
    let script = elements_script(&ops);
    assert!(
        script.contains("delete element inet weft_policy in4 { 10.99.0.1 }"),
        "{script}"
    );
    assert!(
        script.contains("add element ip weft isolated { 10.99.0.3 }"),
        "{script}"
    );
    assert!(
        !script.contains("10.99.0.2 ") && !script.contains("10.99.0.4 "),
        "{script}"
    );
    assert!(
        script.contains("table ip weft {"),
        "the isolated set is declared: {script}"
    );
    // Its address handed to a pod of another group (its ingress isolated by two policies,
    // not one): the element moves, in place.
    let mut like_e = pod("f", "x", 3);
    like_e.labels = gen::pod_labels("e");
    let mut w3 = base.clone();
    w3.add_endpoint(like_e.clone());
    w3.add_endpoint(pod("b", "y", 2));
    w3.add_endpoint(pod("d", "y", 4));
    w3.add_endpoint(pod("e", "x", 5));
    let c3 = compile(&w3, |_| true);
    let ops = diff_elements(&c2, &c3).expect("only elements differ");
    let mut sim = Sim::of(&c2);
    sim.apply(&ops);
    sim.check();
    assert_eq!(sim.c.dispatch, c3.dispatch);
    assert!(ops.iter().any(|o| o.delete && o.set == "in4"), "{ops:?}");
    // The quick step of an ADD does the same on top of what is applied: the element of
    // the other group out before the answer (held meanwhile), its own after.
    let mut applied = c2.clone();
    let quick =
        isolate_one(&mut applied, &mut Groups::default(), &w3, &like_e).expect("groups exist");
    assert!(
        quick.isolate.iter().any(|o| o.delete && o.set == "in4"),
        "{quick:?}"
    );
    let mut sim = Sim::of(&c2);
    sim.apply(&quick.isolate);
    sim.apply(&quick.dispatch);
    sim.check();
    assert_eq!(sim.c.dispatch, applied.dispatch);
    assert_eq!(applied.dispatch, c3.dispatch);
    // A policy that changes is not an element change.
    let w4 = world_of(deny);
    assert_eq!(diff_elements(&c1, &compile(&w4, |_| true)), None);
    // Nothing differs: nothing to do.
    assert_eq!(diff_elements(&c2, &c2), Some(vec![]));
}

#[test]
fn a_large_group_jumps_through_buckets_and_one_change_rewrites_one_bucket() {
    let one = |i: usize| {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p{i}\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{pod: b}}}}\n    ports: [{{port: {}}}]\n", 80 + i % 2)
    };
    let all: String = (0..40).map(one).collect();
    let w1 = world_of(&all);
    let c1 = compile(&w1, |_| true);
    assert!(
        c1.chains.keys().any(|n| n.starts_with("b_")),
        "no bucket chains"
    );
    check_against_engine(&w1, "40 policies through buckets");
    // One policy less: a new group chain, one bucket chain changed, the others kept.
    let fewer: String = (0..40).filter(|i| *i != 7).map(one).collect();
    let w2 = world_of(&fewer);
    let c2 = compile(&w2, |_| true);
    check_against_engine(&w2, "39 policies through buckets");
    let buckets = |c: &Compiled| -> BTreeSet<String> {
        c.chains
            .keys()
            .filter(|n| n.starts_with("b_"))
            .cloned()
            .collect()
    };
    let (b1, b2) = (buckets(&c1), buckets(&c2));
    assert!(b1.difference(&b2).count() <= 1, "{b1:?} {b2:?}");
    assert!(b2.difference(&b1).count() <= 1, "{b1:?} {b2:?}");
    assert!(b1.intersection(&b2).count() >= b1.len() - 1);
    let d = diff_script(&c1, &c2);
    let rules = d.lines().filter(|l| l.starts_with("add rule")).count();
    assert!(rules < 40, "{rules} rules rewritten:\n{d}");
}
