//! Quiver.
