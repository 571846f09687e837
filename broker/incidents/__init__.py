"""Incidents: what a firing asks for (``firing``), opening and acting on incidents
(``service``), alerts (``webhook``) and aging client secrets (``secret_age``)."""
