"""How a participant carries out its work order: the local procedures, each registered by name (`standard`, Co-S2P's
`cos2p`, MP-SL's data owner `pipeline_owner`), on the training loop of msfusion_ray.training. orders.py says what
an order holds; base.py the procedure contract, the registry and the standard procedure."""
