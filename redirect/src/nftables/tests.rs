use super::*;
use crate::golden;

#[test]
fn golden_rule_sets() {
    for (name, plan) in golden::plans() {
        golden::check(&format!("nftables-{name}.nft"), &install_script(&plan));
    }
}

#[test]
fn listing_of_own_ruleset_has_no_diff() {
    for (_, plan) in golden::plans() {
        assert_eq!(diff(&plan, &ruleset(&plan)), Vec::<String>::new());
    }
}

#[test]
fn diff_reports_missing_table_and_changed_rules() {
    let plan = Plan::default().validate().unwrap();
    let d = diff(&plan, "");
    assert!(
        d.iter().all(|l| l.starts_with("- ")) && !d.is_empty(),
        "{d:?}"
    );
    let changed = ruleset(&plan).replace(":15001", ":15999");
    let d = diff(&plan, &changed);
    assert_eq!(
        d,
        [
            "- meta l4proto tcp redirect to :15001",
            "+ meta l4proto tcp redirect to :15999"
        ]
    );
}

#[test]
fn single_and_many_element_sets() {
    assert_eq!(set(&[22]), "22");
    assert_eq!(set(&[22, 80]), "{ 22, 80 }");
}
