use super::*;

fn one(text: &str) -> NetworkPolicy {
    match parse_objects(text, "default").expect("parses").pop() {
        Some(Object::NetworkPolicy(p)) => p,
        other => panic!("not a policy: {other:?}"),
    }
}

fn refused(text: &str) -> String {
    parse_objects(text, "default")
        .expect_err("must be refused")
        .to_string()
}

const HEAD: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n";

#[test]
fn yaml_documents_are_defaulted_as_the_api_server_does() {
    let text = format!(
        "{HEAD}spec:\n  podSelector: {{}}\n  egress:\n  - to:\n    - podSelector: {{matchLabels: {{app: db}}}}\n    ports:\n    - port: 5432\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: y\n  labels: {{team: blue}}\n"
    );
    let objs = parse_objects(&text, "default").unwrap();
    assert_eq!(objs.len(), 2);
    let Object::NetworkPolicy(p) = &objs[0] else {
        panic!()
    };
    // Egress rules and no policyTypes: Ingress AND Egress (the trap the API documents).
    assert!(p.ingress_isolates && p.egress_isolates);
    assert!(p.ingress.is_empty());
    assert_eq!(p.egress[0].ports[0].protocol, Protocol::Tcp);
    assert_eq!(p.egress[0].ports[0].port, Some(PortValue::Number(5432)));
    let Object::Namespace(n) = &objs[1] else {
        panic!()
    };
    assert_eq!(n.labels[NAME_LABEL], "y");
    assert_eq!(n.labels["team"], "blue");
}

#[test]
fn an_egress_deny_all_without_policy_types_does_nothing_to_egress() {
    let p = one(&format!("{HEAD}spec:\n  podSelector: {{}}\n  egress: []\n"));
    assert!(p.ingress_isolates);
    assert!(!p.egress_isolates);
    let p = one(&format!(
        "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
    ));
    assert!(!p.ingress_isolates && p.egress_isolates);
}

#[test]
fn json_objects_and_lists_are_read() {
    let one_obj = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
        "metadata":{"name":"a"},"spec":{"podSelector":{},"ingress":[{}]}}"#;
    let objs = parse_objects(one_obj, "dflt").unwrap();
    let Object::NetworkPolicy(p) = &objs[0] else {
        panic!()
    };
    assert_eq!(p.namespace, "dflt");
    assert_eq!(p.ingress, vec![Rule::default()]);
    let list = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{one_obj},{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"z"}}}}]}}"#
    );
    assert_eq!(parse_objects(&list, "default").unwrap().len(), 2);
}

#[test]
fn ports_are_numbers_names_or_left_out() {
    let p = one(&format!(
        "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: 80\n      protocol: UDP\n    - port: serve-81-tcp\n    - protocol: SCTP\n"
    ));
    let ports = &p.ingress[0].ports;
    assert_eq!(ports[0].port, Some(PortValue::Number(80)));
    assert_eq!(ports[0].protocol, Protocol::Udp);
    assert_eq!(ports[1].port, Some(PortValue::Name("serve-81-tcp".into())));
    assert_eq!(ports[2].port, None);
    assert_eq!(ports[2].protocol, Protocol::Sctp);
}

#[test]
fn what_the_api_server_accepts_and_defaults_is_taken() {
    // No spec at all: every pod of the namespace, isolated for ingress.
    let p = one(HEAD);
    assert_eq!(p.pod_selector, Selector::default());
    assert!(p.ingress_isolates && !p.egress_isolates);
    assert!(p.ingress.is_empty() && p.egress.is_empty());
    // No podSelector: the same as `{}`.
    let p = one(&format!("{HEAD}spec:\n  policyTypes: [Egress, Egress]\n"));
    assert_eq!(p.pod_selector, Selector::default());
    // A type named twice is taken once.
    assert!(!p.ingress_isolates && p.egress_isolates);
    // Subdomain parts longer than 63 (the server holds only the whole to 253), in names
    // and in label key prefixes; ObjectMeta's other fields; an empty namespace is unset.
    let long = "a".repeat(64);
    let p = one(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {long}.b\n  namespace: \"\"\n  finalizers: [x]\n  annotations: {{example.com/note: hi}}\nspec:\n  podSelector: {{matchLabels: {{{long}.example.com/k: v}}}}\n"
    ));
    assert_eq!(p.name, format!("{long}.b"));
    assert_eq!(p.namespace, "default");
    // A Namespace: its name label is set over any other value, a namespace field dropped.
    let objs = parse_objects(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  namespace: y\n  labels: {kubernetes.io/metadata.name: z}\n",
        "default",
    )
    .unwrap();
    let Object::Namespace(n) = &objs[0] else {
        panic!()
    };
    assert_eq!(n.labels[NAME_LABEL], "x");
}

#[test]
fn a_cidr_with_host_bits_is_its_network_with_a_warning() {
    let (objs, warn) = parse_objects_warn(
        &format!("{HEAD}spec:\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.1/8, except: [10.1.2.3/16]}}\n---\n{HEAD}spec: {{}}\n"),
        "default",
    )
    .unwrap();
    let Object::NetworkPolicy(p) = &objs[0] else {
        panic!()
    };
    let b = p.ingress[0].peers[0].ip_block.as_ref().unwrap();
    assert_eq!(b.cidr.to_string(), "10.0.0.0/8");
    assert_eq!(b.except[0].to_string(), "10.1.0.0/16");
    assert_eq!(warn.len(), 2, "{warn:?}");
    assert!(
        warn[0].starts_with("document 1: spec.ingress[0].from[0].ipBlock.cidr: 10.0.0.1/8 has host bits set: read as 10.0.0.0/8"),
        "{warn:?}"
    );
    assert!(
        warn[1].contains("ipBlock.except[0]: 10.1.2.3/16"),
        "{warn:?}"
    );
    // A canonical one warns of nothing.
    let (_, warn) = parse_objects_warn(
        &format!("{HEAD}spec:\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/8}}\n"),
        "default",
    )
    .unwrap();
    assert!(warn.is_empty(), "{warn:?}");
}

#[test]
fn the_normalized_form_parses_back_to_the_same_policy() {
    let p = one(&format!(
        "{HEAD}spec:\n  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [b, a]}}]}}\n  ingress:\n  - from:\n    - namespaceSelector: {{}}\n      podSelector: {{matchLabels: {{pod: a}}}}\n    - ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}\n    ports:\n    - port: 80\n      endPort: 90\n  policyTypes: [Ingress, Egress]\n"
    ));
    let back = parse_objects(&p.to_k8s().to_string(), "other").unwrap();
    assert_eq!(back, vec![Object::NetworkPolicy(p)]);
}

#[test]
fn every_refusal_names_its_field() {
    let spec = |s: &str| format!("{HEAD}spec:\n  podSelector: {{}}\n{s}");
    let cases: Vec<(String, &str)> = vec![
        (
            spec("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}\n"),
            "spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/16 must be strictly inside",
        ),
        (
            spec("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.2.0.0/24]}\n"),
            "except[0]: 10.2.0.0/24 must be strictly inside",
        ),
        (
            spec("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0/16}\n"),
            "ipBlock.cidr: \"10.0.0/16\" is not a CIDR",
        ),
        (
            spec("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16}\n      podSelector: {}\n"),
            "spec.ingress[0].from[0]: ipBlock cannot be combined",
        ),
        (
            spec("  ingress:\n  - from:\n    - {}\n"),
            "spec.ingress[0].from[0]: a peer needs",
        ),
        (
            spec("  ingress:\n  - ports:\n    - endPort: 90\n"),
            "spec.ingress[0].ports[0].endPort: endPort needs a numeric port",
        ),
        (
            spec("  ingress:\n  - ports:\n    - port: http\n      endPort: 90\n"),
            "ports[0].endPort: a named port cannot take endPort",
        ),
        (
            spec("  ingress:\n  - ports:\n    - port: 90\n      endPort: 80\n"),
            "endPort: 80 is below port 90",
        ),
        (
            spec("  ingress:\n  - ports:\n    - port: 0\n"),
            "ports[0].port: expected a port number from 1 to 65535",
        ),
        (
            spec("  ingress:\n  - ports:\n    - protocol: tcp\n"),
            "ports[0].protocol: expected TCP, UDP or SCTP, got \"tcp\"",
        ),
        (
            spec("  ingress:\n  - ports:\n    - port: Web_Port\n"),
            "ports[0].port: \"Web_Port\" is not a port name",
        ),
        (
            spec("  policyTypes: [Ingress, Outgress]\n"),
            "spec.policyTypes[1]: expected Ingress or Egress",
        ),
        (
            spec("  policyTypes: [Egress, Ingress, Egress]\n"),
            "spec.policyTypes: may not name more than two",
        ),
        (
            spec("  ingress:\n  - ports:\n    - port: \"80\"\n"),
            "ports[0].port: \"80\" is not a port name",
        ),
        (
            spec("  ingress:\n  - from:\n    - podSelector: {matchLabels: {version: 1}}\n"),
            "matchLabels[\"version\"]: a label value is a string (quote it: \"1\")",
        ),
        (
            format!("{HEAD}  labels: {{on: true}}\nspec: {{}}\n"),
            "metadata.labels[\"on\"]: a label value is a string",
        ),
        (
            format!("{HEAD}  annotations: {{\"bad key!\": x}}\nspec: {{}}\n"),
            "metadata.annotations[\"bad key!\"]: \"bad key!\" is not a valid annotation key",
        ),
        (
            format!("{HEAD}  annotations: {{a: 1}}\nspec: {{}}\n"),
            "metadata.annotations[\"a\"]: an annotation's value is a string",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  generateName: p-\nspec: {}\n".into(),
            "metadata.name: missing (weft applies objects by name",
        ),
        (
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\nspec: {{}}\n", "a".repeat(254)),
            "is not a DNS subdomain",
        ),
        (
            spec("  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: a, operator: In}]}\n"),
            "matchExpressions[0].values: In needs at least one value",
        ),
        (
            spec("  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}\n"),
            "matchExpressions[0].values: Exists takes no values",
        ),
        (
            spec("  ingress:\n  - from:\n    - podSelector: {matchLabels: {\"-bad\": x}}\n"),
            "is not a valid label key",
        ),
        (
            spec("  ingres: []\n"),
            "spec.ingres: unknown field",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: Bad_Name\nspec:\n  podSelector: {}\n".into(),
            "metadata.name: \"Bad_Name\" is not a DNS subdomain",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n".into(),
            "kind: weft takes NetworkPolicy, Namespace and List objects, not \"Pod\"",
        ),
        (
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata:\n  name: x\n".into(),
            "apiVersion: expected networking.k8s.io/v1",
        ),
        ("key: [unclosed".into(), "not YAML"),
        ("{\"kind\": ".into(), "not JSON"),
        ("".into(), "no object found"),
    ];
    for (text, want) in cases {
        let got = refused(&text);
        assert!(
            got.contains(want),
            "for\n{text}\nwanted {want:?}\ngot {got:?}"
        );
    }
}

#[test]
fn a_refusal_in_a_later_document_says_which() {
    let text = format!(
        "{HEAD}spec:\n  podSelector: {{}}\n---\n{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Nope]\n"
    );
    assert!(refused(&text).starts_with("document 2: spec.policyTypes[0]"));
}
