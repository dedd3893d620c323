"""Running things: the local launcher, the Triton process, rollouts (local, KServe, RayService), and the two
sequences everything else calls, `run_offline()` and `go_live()`. The one place that imports both halves.
"""
