"""Containers: whose they are (owners), the engine's API (docker_api) and the users' socket
to it that stamps every new container with its creator (proxy)."""
