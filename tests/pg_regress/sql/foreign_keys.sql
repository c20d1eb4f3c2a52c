-- Foreign keys in both directions between driftdb and heap tables.
CREATE TABLE parent_d (id int PRIMARY KEY) USING driftdb;
CREATE TABLE child_h (id int PRIMARY KEY, parent int REFERENCES parent_d ON DELETE CASCADE) USING heap;
CREATE TABLE parent_h (id int PRIMARY KEY) USING heap;
CREATE TABLE child_d (id int PRIMARY KEY, parent int REFERENCES parent_h) USING driftdb;
INSERT INTO parent_d VALUES (1), (2);
INSERT INTO child_h VALUES (10, 1), (20, 2);
INSERT INTO child_h VALUES (30, 3);                      -- no such parent
INSERT INTO parent_h VALUES (1);
INSERT INTO child_d VALUES (10, 1);
INSERT INTO child_d VALUES (20, 2);                      -- no such parent
DELETE FROM parent_h WHERE id = 1;                       -- still referenced
DELETE FROM parent_d WHERE id = 1;                       -- cascades
SELECT * FROM child_h ORDER BY id;
