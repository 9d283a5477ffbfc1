use serde_json::json;

use super::*;

#[test]
fn updates_change_only_what_is_sent() {
    let props: Vec<String> = ["email", "name", "metadata", "phone"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut obj = json!({"id": "cus_1", "email": "a@b.c", "name": "A", "phone": "1", "metadata": {"a": "1", "b": "2"}});
    update_fields(
        &mut obj,
        Some(&json!({"name": "B", "phone": "", "metadata": {"a": "", "c": "3"}, "colour": "red"})),
        &props,
    );
    assert_eq!(
        obj,
        json!({"id": "cus_1", "email": "a@b.c", "name": "B", "phone": null, "metadata": {"b": "2", "c": "3"}})
    );
    update_fields(&mut obj, Some(&json!({"metadata": ""})), &props);
    assert_eq!(obj["metadata"], json!({}));
}

#[test]
fn patches_merge_then_copy() {
    let mut obj = json!({"id": "pi_1", "amount": 700, "amount_received": 0, "status": "requires_action", "last_payment_error": null});
    let patch = crate::facade::scenarios::StatePatch {
        merge: Some(json!({"status": "succeeded", "next_action": {"url": "https://x/{id}"}})),
        copy: [
            ("/amount_received".to_owned(), "/object/amount".to_owned()),
            ("/last_payment_error".to_owned(), "/answer/error".to_owned()),
            (
                "/payment_method".to_owned(),
                "/request/payment_method".to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
    };
    apply_patch(&mut obj, &patch, None, &json!({"error": {"code": "x"}}));
    assert_eq!(obj["status"], "succeeded");
    assert_eq!(obj["amount_received"], 700);
    assert_eq!(obj["next_action"]["url"], "https://x/pi_1");
    assert_eq!(obj["last_payment_error"], json!({"code": "x"}));
    assert!(
        obj.get("payment_method").is_none(),
        "absent sources are skipped"
    );
}

#[test]
fn fill_expressions() {
    let t = json!({"amount_received": 2000, "amount_refunded": 500, "currency": "usd"});
    assert_eq!(
        eval("/amount_received - /amount_refunded", &t),
        Some(json!(1500))
    );
    assert_eq!(eval("/currency", &t), Some(json!("usd")));
    assert_eq!(eval("/nope", &t), None);
}

#[test]
fn item_ids_come_from_the_first_parameter() {
    assert_eq!(
        item_id(
            "/v1/payment_intents/{intent}/confirm",
            "/v1/payment_intents/pi_1/confirm"
        ),
        Some("pi_1")
    );
    assert_eq!(item_id("/v1/customers", "/v1/customers"), None);
}

#[test]
fn the_demo_contract_has_three_resources_and_one_action() {
    let source = crate::config::Source::Dir(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let contract =
        crate::contract::Contract::load(&source, std::path::Path::new("contracts/payments.yaml"))
            .expect("the demo contract loads");
    let state = State::compile(
        &contract,
        &config::StateConfig::default(),
        std::path::Path::new("x"),
        0,
    )
    .expect("compiles");
    let names: Vec<&str> = state.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["customers", "payment_intents", "refunds"]);
    let prefixes: Vec<&str> = state.resources.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, ["cus_", "pi_", "re_"]);
    let role = |id: &str| {
        let i = contract
            .operations
            .iter()
            .position(|o| o.id == id)
            .expect("op");
        state.roles[i].map(|(r, role)| (state.resources[r].name.as_str(), role))
    };
    assert_eq!(
        role("confirmPaymentIntent"),
        Some(("payment_intents", Role::Action))
    );
    assert_eq!(role("updateCustomer"), Some(("customers", Role::Update)));
    assert_eq!(role("listCustomers"), Some(("customers", Role::List)));
    assert_eq!(
        role("getPaymentIntent"),
        Some(("payment_intents", Role::Read))
    );
}
