-- Instances are found by name as by id (and names are unique among those of a namespace that
-- hold them): the lookup by name needs no scan.
CREATE INDEX instances_name ON instances (name, namespace);
