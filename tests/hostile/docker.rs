//! Hostile plugins: docker (filled in below).
