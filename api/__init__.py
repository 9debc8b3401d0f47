"""REST API, events stream and explorer pages; talks to the node through `api.service.NodeService`."""
