CREATE TABLE t (id int PRIMARY KEY, v text, n int);
INSERT INTO t SELECT g, 'v' || g, g * 10 FROM generate_series(1, 5) g;
