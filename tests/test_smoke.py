from conftest import event_body


def test_create_event_is_in_the_log_when_acknowledged(api, server):
    r = api.post("/api/events", json=event_body(properties={"Brand": "X"}))
    assert r.status_code == 202, r.text
    s = server.receipt(r.headers["Trackhouse-Receipt"])
    assert s.profile.email == "sarah.mason@klaviyo-demo.com"
    assert s.events[0].metric == "Viewed Product"
    assert s.events[0].properties == {"Brand": "X"}
