//! Controller tests against kube-fake-client, an in-memory API server.
//!
//! What the fake does not do, and how the tests stand in for it:
//! - Server-side apply is a JSON merge plus field ownership; the tests check the objects the
//!   apply leaves, not fields an apply would remove.
//! - No watches, so no `Controller` loop: tests call `reconcile` and `demand::step` directly,
//!   as the controller and the demand loop do.
//! - No scale subresource: `kubectl scale` writes `spec.replicas` through it, so the tests
//!   patch `spec.replicas`.
//! - No ReplicaSet controller: the deletion-cost test checks that the annotations are written
//!   before the Deployment's replicas drop, which is what the ReplicaSet acts on; and the
//!   standby tests check that a claimed pod leaves the standby ReplicaSet's selector (which
//!   is what makes the ReplicaSet start its replacement) and that the standby Deployment
//!   keeps its target.

mod demand;
mod leader;
mod reconcile;
mod standby;
