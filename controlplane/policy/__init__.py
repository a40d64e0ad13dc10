"""Access-policy decision engine (ClusterLink semantics), pure code."""
