"""INV (Bianchi et al., IJCAI 2024): layer-wise cluster maps, their labels and the reveal game."""

from retrofit.inv.maps import ClusterMap, ClusterMaps, cluster_maps

__all__ = ["ClusterMap", "ClusterMaps", "cluster_maps"]
