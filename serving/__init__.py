"""The online half: a Ray Serve graph (features → recall → ranking on Triton → copy), its clients and CLI."""
