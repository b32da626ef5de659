use futures::stream;
use serde_json::json;

use super::*;

fn object(name: &str, spec: serde_json::Value) -> DynamicObject {
    DynamicObject::new(name, &api_resource())
        .within("q")
        .data(json!({ "spec": spec }))
}

fn catalog_json() -> serde_json::Value {
    json!({"catalog": "sales", "schema": "public", "tables": [{"name": "orders", "location": "s3://b/orders/", "hot": false}]})
}

#[test]
fn the_resource_is_quiver_dev_v1alpha1_querypools() {
    let resource = api_resource();
    assert_eq!(resource.group, "quiver.dev");
    assert_eq!(resource.version, "v1alpha1");
    assert_eq!(resource.api_version, "quiver.dev/v1alpha1");
    assert_eq!(resource.kind, "QueryPool");
    assert_eq!(resource.plural, "querypools");
}

#[test]
fn views_of_query_and_standby_pools() {
    let pool = object(
        "sales",
        json!({"template": {"image": "q", "catalog": catalog_json()}}),
    );
    let (name, seen) = view(&pool).unwrap();
    assert_eq!(name, "sales");
    let PoolView::Query {
        catalog: Some(document),
    } = seen
    else {
        panic!("expected a query pool with a catalog, got {seen:?}")
    };
    // The document is the catalog object itself, as JSON (which the worker reads as YAML).
    let parsed: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(parsed, catalog_json());

    let explicit = object(
        "etl",
        json!({"role": "Pool", "template": {"catalog": catalog_json()}}),
    );
    assert!(matches!(
        view(&explicit),
        Some((_, PoolView::Query { catalog: Some(_) }))
    ));

    let standby = object(
        "standby",
        json!({"role": "Standby", "template": {"catalog": catalog_json()}}),
    );
    assert_eq!(view(&standby), Some(("standby".into(), PoolView::Standby)));

    let bare = object("bare", json!({"template": {"image": "q"}}));
    assert_eq!(
        view(&bare),
        Some(("bare".into(), PoolView::Query { catalog: None }))
    );
    let no_spec = DynamicObject::new("x", &api_resource());
    assert_eq!(
        view(&no_spec),
        Some(("x".into(), PoolView::Query { catalog: None }))
    );
}

fn with_catalog(name: &str, table: &str) -> DynamicObject {
    object(
        name,
        json!({"template": {"catalog": {"tables": [{"name": table, "location": "/d"}]}}}),
    )
}

#[tokio::test]
async fn follow_adds_pools_and_keeps_deleted_ones_empty() {
    let pools = Pools::new(["default"]);
    let standby = object("standby", json!({"role": "Standby", "template": {}}));
    let events: Vec<Result<Event<DynamicObject>, watcher::Error>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(with_catalog("a", "t"))),
        Ok(Event::InitApply(standby.clone())),
        Ok(Event::InitDone),
        Ok(Event::Apply(with_catalog("b", "u"))),
        Ok(Event::Apply(with_catalog("a", "v"))),
        Ok(Event::Delete(with_catalog("b", "u"))),
    ];
    follow(stream::iter(events), &pools).await;
    // Standby pools are no query pools; a deleted pool keeps its entry, not its catalog.
    assert_eq!(pools.names(), ["a", "b", "default"]);
    assert!(
        pools.catalog("a").unwrap().contains("\"v\""),
        "the latest spec wins"
    );
    assert_eq!(pools.catalog("b"), None);
    assert_eq!(pools.catalog("default"), None);
}

#[tokio::test]
async fn a_relist_forgets_catalogs_of_pools_deleted_meanwhile() {
    let pools = Pools::new(["default"]);
    let events: Vec<Result<Event<DynamicObject>, watcher::Error>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(with_catalog("a", "t"))),
        Ok(Event::InitApply(with_catalog("b", "t"))),
        Ok(Event::InitDone),
        // The watch restarts; b was deleted while it was down, a turned standby.
        Ok(Event::Init),
        Ok(Event::InitApply(object("a", json!({"role": "Standby"})))),
        Ok(Event::InitDone),
    ];
    follow(stream::iter(events), &pools).await;
    assert_eq!(pools.names(), ["a", "b", "default"]);
    assert_eq!(pools.catalog("a"), None);
    assert_eq!(pools.catalog("b"), None);
}
